"""Imaging orders and scheduled procedure steps, written straight into an index (the rows
``storage.index`` keeps for the Modality Worklist, migration 0012), for tests of what reads
them: MPPS linking a performed step to its scheduled one."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select

from storage.index import Index
from storage.index.models import imaging_order, procedure_step


def scheduled_step(index: Index, *, study_instance_uid: str, accession_number: str,
                   step_id: str = "SPS1", patient_id: str = "P1",
                   modality: str = "CT") -> int:
    """An order for ``study_instance_uid`` with one SCHEDULED step; the step's row id."""
    now = datetime.now(UTC)
    with index.unit_of_work(write=True) as repository:
        connection = repository.connection
        order_id = connection.execute(insert(imaging_order).values(
            patient_id=patient_id, issuer_of_patient_id="", patient_name="DOE^JANE",
            patient_name_norm="DOE^JANE", accession_number=accession_number,
            requested_procedure_id="RP1", study_instance_uid=study_instance_uid,
            status="scheduled", source="rest", created_at=now, updated_at=now,
        ).returning(imaging_order.c.id)).scalar_one()
        return int(connection.execute(insert(procedure_step).values(
            order_fk=order_id, step_id=step_id, modality=modality, station_ae_title="CT1",
            start_date="20260101", status="SCHEDULED", updated_at=now,
        ).returning(procedure_step.c.id)).scalar_one())


def step_status(index: Index, step: int) -> str:
    """The Scheduled Procedure Step Status of the step with row id ``step``."""
    with index.unit_of_work() as repository:
        return str(repository.connection.execute(
            select(procedure_step.c.status).where(procedure_step.c.id == step)).scalar_one())
