"""The Modality Worklist's query model (PS3.4 K.6.1): one item per scheduled procedure step;
no SQL here (``storage.index.worklist`` compiles a :class:`WorklistQuery` to one statement).

A worklist item is a Scheduled Procedure Step of a Requested Procedure of an Imaging Service
Request (PS3.4 K.6.1.1); in the index, a ``procedure_step`` row joined to its
``imaging_order``. Its attributes live at two places of a C-FIND Identifier (PS3.4 Table
K.6-1): the patient, visit and request keys at the top level, the step's keys in the first
item of the Scheduled Procedure Step Sequence (0040,0100). :data:`ATTRIBUTES` is the one table
of them: keyword, VR, where it is stored, where it goes in an Identifier.

Matching uses the matchers of Q/R (``storage.query``: single value, universal, wildcard, range,
list of UIDs, list of values), so a worklist value means what it means in a Q/R query.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from storage.query import Condition, InvalidQueryValue, SingleValue, ValueList


class Entity(StrEnum):
    """Where a worklist attribute is stored."""

    ORDER = "order"  # imaging_order: the patient, the request (one Requested Procedure)
    STEP = "step"  # procedure_step: one Scheduled Procedure Step


@dataclass(frozen=True)
class WorklistAttribute:
    """An attribute of a worklist item: ``column`` of ``entity``'s table, ``match_form`` the
    column holding its case- and accent-folded form (PN, PS3.4 C.2.2.2.1) when there is one;
    ``in_step``: it belongs in the Scheduled Procedure Step Sequence item (PS3.4 Table K.6-1).
    """

    keyword: str
    vr: str
    entity: Entity
    column: str
    match_form: str | None = None

    @property
    def in_step(self) -> bool:
        return self.entity is Entity.STEP


ORD, SPS = Entity.ORDER, Entity.STEP

ATTRIBUTES: tuple[WorklistAttribute, ...] = (
    # Patient identification and demographics (PS3.4 Table K.6-1)
    WorklistAttribute("PatientName", "PN", ORD, "patient_name", "patient_name_norm"),
    WorklistAttribute("PatientID", "LO", ORD, "patient_id"),
    WorklistAttribute("IssuerOfPatientID", "LO", ORD, "issuer_of_patient_id"),
    WorklistAttribute("PatientBirthDate", "DA", ORD, "patient_birth_date"),
    WorklistAttribute("PatientSex", "CS", ORD, "patient_sex"),
    # Imaging Service Request and Requested Procedure
    WorklistAttribute("AccessionNumber", "SH", ORD, "accession_number"),
    WorklistAttribute("ReferringPhysicianName", "PN", ORD, "referring_physician_name"),
    WorklistAttribute("PlacerOrderNumberImagingServiceRequest", "LO", ORD, "placer_order_number"),
    WorklistAttribute("FillerOrderNumberImagingServiceRequest", "LO", ORD, "filler_order_number"),
    WorklistAttribute("RequestedProcedureID", "SH", ORD, "requested_procedure_id"),
    WorklistAttribute("RequestedProcedureDescription", "LO", ORD,
                      "requested_procedure_description"),
    WorklistAttribute("StudyInstanceUID", "UI", ORD, "study_instance_uid"),
    # Scheduled Procedure Step (the Scheduled Procedure Step Sequence item)
    WorklistAttribute("ScheduledStationAETitle", "AE", SPS, "station_ae_title"),
    WorklistAttribute("ScheduledStationName", "SH", SPS, "station_name"),
    WorklistAttribute("ScheduledProcedureStepStartDate", "DA", SPS, "start_date"),
    WorklistAttribute("ScheduledProcedureStepStartTime", "TM", SPS, "start_time"),
    WorklistAttribute("Modality", "CS", SPS, "modality"),
    WorklistAttribute("ScheduledPerformingPhysicianName", "PN", SPS, "performing_physician_name"),
    WorklistAttribute("ScheduledProcedureStepDescription", "LO", SPS, "description"),
    WorklistAttribute("ScheduledProcedureStepID", "SH", SPS, "step_id"),
    WorklistAttribute("ScheduledProcedureStepStatus", "CS", SPS, "status"),
)
"""Every stored attribute of a worklist item; each can be matched and returned. The two
physician names have no match form in the index (migration 0012): they match as stored."""

BY_KEYWORD = {attribute.keyword: attribute for attribute in ATTRIBUTES}

SCHEDULED_STEP_SEQUENCE = "ScheduledProcedureStepSequence"  # (0040,0100)

START_DATE = "ScheduledProcedureStepStartDate"
START_TIME = "ScheduledProcedureStepStartTime"
STEP_STATUS = "ScheduledProcedureStepStatus"


class StepStatus(StrEnum):
    """Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


TO_BE_DONE: tuple[StepStatus, ...] = (StepStatus.SCHEDULED, StepStatus.ARRIVED,
                                      StepStatus.READY)
"""What a modality is shown when it does not ask for a status: the steps still to be done."""

ENDED_ORDER_STATUSES: tuple[str, ...] = ("cancelled", "completed", "discontinued")
"""``imaging_order.status`` values whose steps are not offered to be done any more."""

_ENDED_STEP_STATUSES = frozenset({StepStatus.CANCELED, StepStatus.COMPLETED,
                                  StepStatus.DISCONTINUED})

WorklistRecord = dict[str, str | None]
"""One worklist item: the value of each keyword of :data:`ATTRIBUTES` (None: not known)."""


@dataclass(frozen=True)
class WorklistQuery:
    """A Modality Worklist query (PS3.4 K.6.1.2): every condition holds for one item.

    Without a condition on ScheduledProcedureStepStatus only steps still to be done are
    matched (:data:`TO_BE_DONE`, of orders not ended). ``combined_datetime``: the start date
    and time ranges are one date-time range (PS3.4 C.2.2.2.5.1), as an SCU may ask by
    extended negotiation; otherwise each is matched on its own.
    """

    conditions: tuple[Condition, ...] = ()
    limit: int | None = None
    fuzzy_person_names: bool = True
    combined_datetime: bool = False

    level = "WORKLIST"  # what the audit trail calls it, beside Q/R's levels

    def __post_init__(self) -> None:
        for condition in self.conditions:
            if condition.keyword not in BY_KEYWORD:
                raise InvalidQueryValue(f"{condition.keyword} is not a worklist key")
        if self.limit is not None and self.limit < 0:
            raise InvalidQueryValue(f"limit must not be negative, not {self.limit}")

    @property
    def asks_status(self) -> bool:
        """Whether a condition names the step's status (the default of K.6.1.2 is off)."""
        return any(c.keyword == STEP_STATUS for c in self.conditions)

    @property
    def includes_ended(self) -> bool:
        """Whether the statuses asked for include an ended one (CANCELED, COMPLETED,
        DISCONTINUED): then the steps of ended orders are matched too."""
        for condition in self.conditions:
            if condition.keyword != STEP_STATUS:
                continue
            matcher = condition.matcher
            values = (matcher.values if isinstance(matcher, ValueList)
                      else (matcher.value,) if isinstance(matcher, SingleValue) else ())
            if not values or any(v.upper() in _ENDED_STEP_STATUSES for v in values):
                return True  # a wildcard may match an ended status
        return False
