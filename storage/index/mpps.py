"""Index records of Modality Performed Procedure Steps (PS3.4 F.7) and the scheduled steps they
perform. SQL only; the rules (which status may follow which, what an N-SET may change, how a
step is found from the Scheduled Step Attributes) live in ``pacs.services.mpps``.

The questions the study stability logic asks are answered here in SQL, never by a scan in
Python: :meth:`MppsRecords.ready_studies` (studies whose completed MPPS are fully stored) and
:meth:`MppsRecords.missing_instances` (what a study's completed MPPS still waits for).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from storage.index.models import imaging_order, instance, mpps, mpps_instance, procedure_step

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"


@dataclass(frozen=True)
class MppsRecord:
    """One MPPS as stored."""

    id: int
    sop_instance_uid: str
    status: str
    calling_ae: str | None
    study_instance_uid: str | None
    step_fk: int | None
    started: str | None
    ended: str | None
    attributes: str  # DICOM JSON
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MppsSummary:
    """An MPPS of a study, for the study page: its state, times and instance counts."""

    sop_instance_uid: str
    status: str
    calling_ae: str | None
    step_id: str | None  # the scheduled step it performs (ScheduledProcedureStepID)
    started: str | None
    ended: str | None
    created_at: datetime
    updated_at: datetime
    referenced: int  # instances its final N-SET referenced
    stored: int  # of which the index holds


@dataclass(frozen=True)
class StepMatch:
    """A scheduled procedure step found for an MPPS, and the study its order is for."""

    id: int
    step_id: str
    study_instance_uid: str


@dataclass(frozen=True)
class ReferencedInstance:
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _record(row: Any) -> MppsRecord:
    return MppsRecord(
        id=row.id, sop_instance_uid=row.sop_instance_uid, status=row.status,
        calling_ae=row.calling_ae, study_instance_uid=row.study_instance_uid,
        step_fk=row.step_fk, started=row.started, ended=row.ended, attributes=row.attributes,
        created_at=_aware(row.created_at), updated_at=_aware(row.updated_at),
    )


def _stored(sop_instance_uid: Any) -> Any:
    return exists().where(instance.c.sop_instance_uid == sop_instance_uid)


def performed_and_arrived(study_instance_uid: Any) -> Any:
    """SQL: the study (its UID column or value) has a COMPLETED MPPS that referenced at least
    one instance, every one of them in the index, and no MPPS still IN PROGRESS: the modality
    said it is done and everything it made has arrived (what :meth:`MppsRecords.ready_studies`
    lists, as a condition on one study)."""
    done = mpps.alias("done")
    other = mpps.alias("other")
    unstored = (select(mpps_instance.c.id)
                .where(mpps_instance.c.mpps_fk == done.c.id,
                       ~_stored(mpps_instance.c.sop_instance_uid)))
    return exists().where(
        done.c.study_instance_uid == study_instance_uid,
        done.c.status == COMPLETED,
        exists().where(mpps_instance.c.mpps_fk == done.c.id),
        ~exists(unstored),
        ~exists().where(other.c.study_instance_uid == study_instance_uid,
                        other.c.status == IN_PROGRESS),
    )


class MppsRecords:
    """MPPS reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # -- the MPPS themselves -------------------------------------------------------------------
    def get(self, sop_instance_uid: str, *, for_update: bool = False) -> MppsRecord | None:
        """The MPPS, locked until the transaction ends with ``for_update`` (PostgreSQL; a
        SQLite writer holds the whole database already): two N-SETs of one MPPS are served
        one after the other."""
        statement = select(mpps).where(mpps.c.sop_instance_uid == sop_instance_uid)
        if for_update and self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update()
        row = self.connection.execute(statement).first()
        return _record(row) if row else None

    def create(self, *, sop_instance_uid: str, status: str, calling_ae: str | None,
               study_instance_uid: str | None, step_fk: int | None, started: str | None,
               ended: str | None, attributes: str, at: datetime) -> int:
        """Insert an MPPS; a second one with the same SOP Instance UID fails at the unique
        constraint (``IndexDataError`` from a savepoint)."""
        result = self.connection.execute(insert(mpps).values(
            sop_instance_uid=sop_instance_uid, status=status, calling_ae=calling_ae,
            study_instance_uid=study_instance_uid, step_fk=step_fk, started=started,
            ended=ended, attributes=attributes, created_at=at, updated_at=at,
        ).returning(mpps.c.id))
        return int(result.scalar_one())

    def update(self, mpps_id: int, *, status: str, attributes: str, started: str | None,
               ended: str | None, at: datetime) -> None:
        self.connection.execute(update(mpps).where(mpps.c.id == mpps_id).values(
            status=status, attributes=attributes, started=started, ended=ended, updated_at=at))

    def add_instances(self, mpps_id: int, instances: Iterable[ReferencedInstance]) -> int:
        rows = [{"mpps_fk": mpps_id, "series_instance_uid": item.series_instance_uid,
                 "sop_class_uid": item.sop_class_uid, "sop_instance_uid": item.sop_instance_uid}
                for item in instances]
        if rows:
            self.connection.execute(insert(mpps_instance), rows)
        return len(rows)

    # -- the scheduled step --------------------------------------------------------------------
    def find_step(self, *, study_instance_uid: str | None, accession_number: str | None,
                  step_id: str | None) -> StepMatch | None:
        """The scheduled step an MPPS names in one Scheduled Step Attributes item: its
        Scheduled Procedure Step ID within the order of its Study Instance UID or Accession
        Number; without a step ID, the order's only step. None when nothing matches, or
        several could."""
        order_keys = []
        if study_instance_uid:
            order_keys.append(imaging_order.c.study_instance_uid == study_instance_uid)
        if accession_number:
            order_keys.append(imaging_order.c.accession_number == accession_number)
        if not order_keys:
            return None
        statement = (
            select(procedure_step.c.id, procedure_step.c.step_id,
                   imaging_order.c.study_instance_uid)
            .join(imaging_order, imaging_order.c.id == procedure_step.c.order_fk)
            .where(or_(*order_keys))
            .order_by(procedure_step.c.id).limit(2)
        )
        if step_id:
            statement = statement.where(procedure_step.c.step_id == step_id)
        rows = self.connection.execute(statement).all()
        if len(rows) != 1:
            return None
        row = rows[0]
        return StepMatch(row.id, row.step_id, row.study_instance_uid)

    def set_step_status(self, step_fk: int, status: str, at: datetime) -> None:
        """Scheduled Procedure Step Status (PS3.3 C.4.10) of the step an MPPS performs."""
        self.connection.execute(update(procedure_step).where(procedure_step.c.id == step_fk)
                                .values(status=status, updated_at=at))

    # -- what the stability logic asks -----------------------------------------------------------
    def ready_studies(self, limit: int = 1000) -> list[str]:
        """Studies with a COMPLETED MPPS that referenced at least one instance, every one of
        which is in the index, and no MPPS still IN PROGRESS: one statement."""
        other = mpps.alias("other")
        unstored = (select(mpps_instance.c.id)
                    .where(mpps_instance.c.mpps_fk == mpps.c.id,
                           ~_stored(mpps_instance.c.sop_instance_uid)))
        statement = (
            select(mpps.c.study_instance_uid).distinct()
            .where(
                mpps.c.status == COMPLETED,
                mpps.c.study_instance_uid.is_not(None),
                exists().where(mpps_instance.c.mpps_fk == mpps.c.id),
                ~exists(unstored),
                ~exists().where(other.c.study_instance_uid == mpps.c.study_instance_uid,
                                other.c.status == IN_PROGRESS),
            )
            .order_by(mpps.c.study_instance_uid).limit(limit)
        )
        return [str(uid) for uid in self.connection.execute(statement).scalars()]

    def missing_instances(self, study_instance_uid: str, limit: int = 10_000) -> list[str]:
        """The SOP Instance UIDs the study's COMPLETED MPPS referenced that the index lacks."""
        statement = (
            select(mpps_instance.c.sop_instance_uid).distinct()
            .join(mpps, mpps.c.id == mpps_instance.c.mpps_fk)
            .where(mpps.c.study_instance_uid == study_instance_uid,
                   mpps.c.status == COMPLETED,
                   ~_stored(mpps_instance.c.sop_instance_uid))
            .order_by(mpps_instance.c.sop_instance_uid).limit(limit)
        )
        return [str(uid) for uid in self.connection.execute(statement).scalars()]

    def mark_incomplete_checked(self, study_instance_uid: str, at: datetime) -> int:
        """Note when the stability logic last found the study's completed MPPS incomplete."""
        result = self.connection.execute(
            update(mpps).where(mpps.c.study_instance_uid == study_instance_uid,
                               mpps.c.status == COMPLETED)
            .values(incomplete_checked_at=at))
        return int(result.rowcount or 0)

    def of_study(self, study_instance_uid: str) -> list[MppsSummary]:
        """The study's MPPS, oldest first, with their instance counts (one statement)."""
        referenced = (select(func.count(mpps_instance.c.id))
                      .where(mpps_instance.c.mpps_fk == mpps.c.id).scalar_subquery())
        stored = (select(func.count(mpps_instance.c.id))
                  .where(and_(mpps_instance.c.mpps_fk == mpps.c.id,
                              _stored(mpps_instance.c.sop_instance_uid)))
                  .scalar_subquery())
        statement = (
            select(mpps, procedure_step.c.step_id.label("step_id"),
                   referenced.label("referenced"), stored.label("stored_count"))
            .outerjoin(procedure_step, procedure_step.c.id == mpps.c.step_fk)
            .where(mpps.c.study_instance_uid == study_instance_uid)
            .order_by(mpps.c.created_at, mpps.c.id)
        )
        return [
            MppsSummary(
                sop_instance_uid=row.sop_instance_uid, status=row.status,
                calling_ae=row.calling_ae, step_id=row.step_id, started=row.started,
                ended=row.ended, created_at=_aware(row.created_at),
                updated_at=_aware(row.updated_at), referenced=int(row.referenced or 0),
                stored=int(row.stored_count or 0),
            )
            for row in self.connection.execute(statement)
        ]
