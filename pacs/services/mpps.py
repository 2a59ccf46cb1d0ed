"""Modality Performed Procedure Step (PS3.4 F.7, SOP Class 1.2.840.10008.3.1.2.3.3): what a
modality says it did, kept as a record the workflow can lean on.

* :meth:`MppsService.create` (N-CREATE, F.7.2.1): a new step, IN PROGRESS only; its SOP
  Instance UID is the request's or made here. It is linked to the scheduled step it performs,
  found from its Scheduled Step Attributes Sequence (the order's Study Instance UID or
  Accession Number, and the Scheduled Procedure Step ID), which becomes STARTED; its study is
  that item's Study Instance UID, else the order's.
* :meth:`MppsService.set` (N-SET, F.7.2.2): changes only while IN PROGRESS; the attributes sent
  replace the stored ones. COMPLETED or DISCONTINUED is final: the scheduled step takes that
  status, and the instances of the Performed Series Sequence (Referenced Image Sequence and
  Referenced Non-Image Composite SOP Instance Sequence, PS3.3 C.4.17) are recorded.
* :meth:`MppsService.ready_studies`, :meth:`MppsService.missing_instances`: what the study
  stability logic asks (answered in SQL by ``storage.index.mpps``).

Errors (mapped to DIMSE statuses by ``pacs.dimse.status``): ``MissingAttribute`` (no status),
``InvalidValue`` (a status or UID that cannot be used), ``AlreadyExists`` (the SOP Instance
UID is taken), ``NotFound`` (no such MPPS), ``IllegalTransition`` (it is final already: it
"may no longer be updated", F.7.2.2.4), ``OutOfResources`` (too large to keep).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.services.errors import (
    AlreadyExists,
    IllegalTransition,
    InvalidValue,
    MissingAttribute,
    NotFound,
    OutOfResources,
)
from pacs.services.ingest import Origin
from pacs.services.workflow import actor
from storage.index import Index, IndexDataError
from storage.index.mpps import (
    COMPLETED,
    DISCONTINUED,
    IN_PROGRESS,
    MppsSummary,
    ReferencedInstance,
    StepMatch,
)

__all__ = ["COMPLETED", "DISCONTINUED", "IN_PROGRESS", "MppsService", "MppsSummary"]

log = logging.getLogger(__name__)

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL = frozenset({COMPLETED, DISCONTINUED})
# Scheduled Procedure Step Status (PS3.3 C.4.10) of the step an MPPS performs, by its status
STEP_STATUS = {IN_PROGRESS: "STARTED", COMPLETED: "COMPLETED", DISCONTINUED: "DISCONTINUED"}

MAX_ATTRIBUTES_BYTES = 1 << 20  # an MPPS is a few KB; its DICOM JSON is kept whole
MAX_REFERENCES = 10_000  # instances one MPPS may reference
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True)
class MppsOutcome:
    """What an N-CREATE or N-SET did."""

    sop_instance_uid: str
    status: str
    study_instance_uid: str | None
    step_id: str | None = None  # the scheduled step linked (N-CREATE)
    referenced: int = 0  # instances recorded (a final N-SET)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_uid(value: str, what: str) -> str:
    """A UID (PS3.5 9.1): at most 64 characters, digits in dot-separated components."""
    uid = value.strip().rstrip("\0")
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise InvalidValue(f"{what} {uid[:70]!r} is not a valid UID")
    return uid


class MppsService:
    def __init__(self, *, index: Index, clock: Callable[[], dt.datetime] = _now) -> None:
        self.index = index
        self.clock = clock

    # -- N-CREATE ------------------------------------------------------------------------------
    def create(self, attributes: Dataset, *, sop_instance_uid: str | None,
               origin: Origin) -> MppsOutcome:
        """A new MPPS, IN PROGRESS (PS3.4 F.7.2.1); the UID made here when none was given."""
        status = _status(attributes)
        if status != IN_PROGRESS:
            raise InvalidValue(f"Performed Procedure Step Status must be {IN_PROGRESS} in an "
                               f"N-CREATE, not {status!r}")
        uid = (check_uid(sop_instance_uid, "Affected SOP Instance UID") if sop_instance_uid
               else str(generate_uid()))
        encoded = _json(attributes)
        scheduled = list(_scheduled(attributes))
        now = self.clock()
        who = actor(origin.protocol, origin.ae_title, origin.address,
                    tls_subject=origin.tls_subject)
        with self.index.unit_of_work(write=True) as repository:
            records = repository.mpps
            if records.get(uid) is not None:
                raise AlreadyExists("an MPPS with this SOP Instance UID exists already")
            step = _find_step(records, scheduled)
            study_uid = next((item["study"] for item in scheduled if item["study"]), None)
            if study_uid is None and step is not None:
                study_uid = step.study_instance_uid
            try:
                with repository.savepoint():
                    records.create(
                        sop_instance_uid=uid, status=status, calling_ae=origin.ae_title,
                        study_instance_uid=study_uid, step_fk=step.id if step else None,
                        started=_date_time(attributes, "PerformedProcedureStepStart"),
                        ended=_date_time(attributes, "PerformedProcedureStepEnd"),
                        attributes=encoded, at=now)
            except IndexDataError as error:  # created meanwhile by another association
                raise AlreadyExists(
                    "an MPPS with this SOP Instance UID exists already") from error
            if step is not None:
                records.set_step_status(step.id, STEP_STATUS[status], now)
            repository.audit.append(
                actor=who, action="mpps-create", outcome=status, study_instance_uid=study_uid,
                detail={"sop_instance_uid": uid, "calling_ae": origin.ae_title,
                        "scheduled_step": step.step_id if step else None})
        log.info("MPPS %s created (%s) by %s for study %s", uid, status, who, study_uid)
        return MppsOutcome(uid, status, study_uid, step.step_id if step else None)

    # -- N-SET ---------------------------------------------------------------------------------
    def set(self, sop_instance_uid: str, modifications: Dataset, *,
            origin: Origin) -> MppsOutcome:
        """Change an MPPS still IN PROGRESS (PS3.4 F.7.2.2); COMPLETED or DISCONTINUED is
        final and records the instances it references."""
        uid = check_uid(sop_instance_uid, "Requested SOP Instance UID")
        new_status = _status(modifications) if "PerformedProcedureStepStatus" in modifications \
            else None
        if new_status is not None and new_status not in STATUSES:
            raise InvalidValue(f"Performed Procedure Step Status {new_status!r} is not one of "
                               f"{', '.join(STATUSES)}")
        now = self.clock()
        who = actor(origin.protocol, origin.ae_title, origin.address,
                    tls_subject=origin.tls_subject)
        with self.index.unit_of_work(write=True) as repository:
            records = repository.mpps
            record = records.get(uid, for_update=True)
            if record is None:
                raise NotFound(f"no MPPS with SOP Instance UID {uid}")
            if record.status != IN_PROGRESS:
                raise IllegalTransition(NO_LONGER_UPDATABLE, current_state=record.status)
            merged = _merge(record.attributes, modifications)
            status = new_status or record.status
            references = _references(merged) if status in FINAL else []
            records.update(record.id, status=status, attributes=_json(merged),
                           started=_date_time(merged, "PerformedProcedureStepStart"),
                           ended=_date_time(merged, "PerformedProcedureStepEnd"), at=now)
            records.add_instances(record.id, references)
            if record.step_fk is not None and status != record.status:
                records.set_step_status(record.step_fk, STEP_STATUS[status], now)
            repository.audit.append(
                actor=who, action="mpps-set", outcome=status,
                study_instance_uid=record.study_instance_uid,
                detail={"sop_instance_uid": uid, "calling_ae": origin.ae_title,
                        "referenced_instances": len(references)})
        log.info("MPPS %s set to %s by %s (%d instances referenced)", uid, status, who,
                 len(references))
        return MppsOutcome(uid, status, record.study_instance_uid, referenced=len(references))

    # -- reads ---------------------------------------------------------------------------------
    def ready_studies(self, limit: int = 1000) -> list[str]:
        """Studies whose COMPLETED MPPS reference only stored instances (and at least one),
        with no MPPS still IN PROGRESS: the modality says they are whole."""
        with self.index.unit_of_work() as repository:
            return repository.mpps.ready_studies(limit)

    def missing_instances(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs the study's COMPLETED MPPS referenced that are not stored."""
        with self.index.unit_of_work() as repository:
            return repository.mpps.missing_instances(study_instance_uid)

    def mark_incomplete_checked(self, study_instance_uid: str) -> None:
        """For the stability logic: it found the study's completed MPPS incomplete now."""
        with self.index.unit_of_work(write=True) as repository:
            repository.mpps.mark_incomplete_checked(study_instance_uid, self.clock())

    def of_study(self, study_instance_uid: str) -> list[MppsSummary]:
        """The study's MPPS (the study page): status, times, instance counts."""
        with self.index.unit_of_work() as repository:
            return repository.mpps.of_study(study_instance_uid)


def _status(attributes: Dataset) -> str:
    value = attributes.get("PerformedProcedureStepStatus")
    if value is None or value == "":
        raise MissingAttribute("Performed Procedure Step Status (0040,0252) is missing")
    return str(value).strip().upper()


def _json(attributes: Dataset) -> str:
    """The data set as DICOM JSON (PS3.18 F.2), bounded."""
    try:
        encoded = json.dumps(attributes.to_json_dict(), ensure_ascii=False)
    except (ValueError, TypeError, KeyError) as error:
        raise InvalidValue(f"the attribute list cannot be kept: {error}") from error
    if len(encoded) > MAX_ATTRIBUTES_BYTES:
        raise OutOfResources(f"the attribute list is too large ({len(encoded)} bytes as JSON, "
                             f"at most {MAX_ATTRIBUTES_BYTES})")
    return encoded


def _merge(stored: str, modifications: Dataset) -> Dataset:
    """The stored attributes with those of an N-SET replacing theirs (PS3.4 F.7.2.2.1)."""
    merged = Dataset.from_json(stored)
    for element in modifications:
        merged[element.tag] = element
    return merged


def _date_time(attributes: Dataset, prefix: str) -> str | None:
    date = str(attributes.get(f"{prefix}Date") or "").strip()
    time = str(attributes.get(f"{prefix}Time") or "").strip()
    return (date + time)[:32] or None


def _scheduled(attributes: Dataset) -> Iterator[dict[str, str | None]]:
    """The Scheduled Step Attributes Sequence's keys, item by item (PS3.4 F.7.2.1)."""
    for item in attributes.get("ScheduledStepAttributesSequence") or []:
        keys = {"study": item.get("StudyInstanceUID"), "accession": item.get("AccessionNumber"),
                "step_id": item.get("ScheduledProcedureStepID")}
        yield {key: (str(value).strip() or None) if value is not None else None
               for key, value in keys.items()}


def _find_step(records: Any, scheduled: list[dict[str, str | None]]) -> StepMatch | None:
    for item in scheduled:
        step: StepMatch | None = records.find_step(
            study_instance_uid=item["study"], accession_number=item["accession"],
            step_id=item["step_id"])
        if step is not None:
            return step
    return None


def _references(attributes: Dataset) -> list[ReferencedInstance]:
    """The instances of the Performed Series Sequence (PS3.3 C.4.17), at most
    ``MAX_REFERENCES``."""
    found: list[ReferencedInstance] = []
    for series in attributes.get("PerformedSeriesSequence") or []:
        series_uid = str(series.get("SeriesInstanceUID") or "").strip()
        for keyword in ("ReferencedImageSequence",
                        "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in series.get(keyword) or []:
                sop_class = str(item.get("ReferencedSOPClassUID") or "").strip()
                sop_instance = str(item.get("ReferencedSOPInstanceUID") or "").strip()
                if not sop_instance:
                    raise MissingAttribute(f"an item of {keyword} has no Referenced SOP "
                                           "Instance UID")
                found.append(ReferencedInstance(
                    series_uid[:64], check_uid(sop_class, "Referenced SOP Class UID")
                    if sop_class else "", check_uid(sop_instance, "Referenced SOP Instance UID")))
                if len(found) > MAX_REFERENCES:
                    raise OutOfResources(f"more than {MAX_REFERENCES} instances referenced")
    return found
