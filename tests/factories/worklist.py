"""Imaging orders and their scheduled procedure steps, written into an index for worklist tests.

Each :class:`Order` is one Requested Procedure with its steps (:class:`Step`); values are named
after the DICOM attributes they become in a worklist response. Nothing depends on a clock: the
dates are given.

:func:`schedule` is the one seam: it writes the rows with SQLAlchemy Core, as the order
intake will (``imaging_order`` and ``procedure_step``, migration 0012). Once ``POST
/api/orders`` exists, it can post each order to the server instead, and the tests calling it
do not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import insert

from storage.index import Index
from storage.index.models import imaging_order, procedure_step
from storage.normalize import normalize_text
from tests.factories.datasets import make_uid


@dataclass(frozen=True)
class Step:
    """One Scheduled Procedure Step (PS3.4 Table K.6-1, the sequence item)."""

    step_id: str = "SPS1"  # ScheduledProcedureStepID
    station_ae_title: str | None = "CT1"  # ScheduledStationAETitle
    station_name: str | None = "CT ROOM 1"  # ScheduledStationName
    modality: str | None = "CT"
    start_date: str | None = "20261207"  # ScheduledProcedureStepStartDate
    start_time: str | None = "080000"  # ScheduledProcedureStepStartTime
    description: str | None = "CT head without contrast"  # ScheduledProcedureStepDescription
    performing_physician_name: str | None = None  # ScheduledPerformingPhysicianName
    status: str = "SCHEDULED"  # ScheduledProcedureStepStatus


@dataclass(frozen=True)
class Order:
    """One imaging order: the patient and the Requested Procedure, with its steps."""

    patient_id: str
    patient_name: str | None = "Doe^John"
    issuer_of_patient_id: str = ""
    patient_birth_date: str | None = "19700101"
    patient_sex: str | None = "M"
    accession_number: str | None = None  # default: derived from patient_id
    requested_procedure_id: str | None = "RP1"
    requested_procedure_description: str | None = "CT head"
    study_instance_uid: str | None = None  # default: derived from patient_id and accession
    referring_physician_name: str | None = "Referring^Rita"
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    status: str = "scheduled"  # imaging_order.status
    steps: tuple[Step, ...] = field(default_factory=lambda: (Step(),))

    @property
    def accession(self) -> str:
        return self.accession_number or f"A-{self.patient_id}"[:16]

    @property
    def study_uid(self) -> str:
        return self.study_instance_uid or str(make_uid("order", self.patient_id, self.accession))


def schedule(index: Index, orders: Iterable[Order]) -> None:
    """Write ``orders`` and their steps in one transaction."""
    with index.unit_of_work(write=True) as repository:
        connection = repository.connection
        for order in orders:
            order_id = connection.execute(insert(imaging_order).values(
                patient_id=order.patient_id,
                issuer_of_patient_id=order.issuer_of_patient_id,
                patient_name=order.patient_name,
                patient_name_norm=(normalize_text(order.patient_name)
                                   if order.patient_name is not None else None),
                patient_birth_date=order.patient_birth_date,
                patient_sex=order.patient_sex,
                accession_number=order.accession,
                requested_procedure_id=order.requested_procedure_id,
                requested_procedure_description=order.requested_procedure_description,
                study_instance_uid=order.study_uid,
                placer_order_number=order.placer_order_number,
                filler_order_number=order.filler_order_number,
                referring_physician_name=order.referring_physician_name,
                status=order.status,
                source="rest",
            ).returning(imaging_order.c.id)).scalar_one()
            for step in order.steps:
                connection.execute(insert(procedure_step).values(
                    order_fk=order_id,
                    step_id=step.step_id,
                    station_ae_title=step.station_ae_title,
                    station_name=step.station_name,
                    modality=step.modality,
                    start_date=step.start_date,
                    start_time=step.start_time,
                    description=step.description,
                    performing_physician_name=step.performing_physician_name,
                    status=step.status,
                ))


def schedule_at(database_url: str, orders: Iterable[Order]) -> None:
    """:func:`schedule` into the index at ``database_url`` (a running server's, too)."""
    index = Index(database_url)
    try:
        schedule(index, orders)
    finally:
        index.dispose()
