"""Index records of imaging orders and their scheduled procedure steps (``imaging_order``,
``procedure_step``). SQL only: what a valid order is, which changes are allowed, conflicts and
the audit trail live in ``pacs.services.orders``. Flushes, never commits.

Values go in and come out by column name (``patient_id``, ``step_id``, ...); the service
translates DICOM keywords to these names. Orders are read with their steps in two statements
(the orders, then the steps of all of them), never one statement per order.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from storage.index.models import imaging_order, procedure_step
from storage.normalize import normalize_text

ORDER_COLUMNS = (
    "patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex",
    "accession_number", "requested_procedure_id", "requested_procedure_description",
    "study_instance_uid", "placer_order_number", "filler_order_number",
    "referring_physician_name",
)
"""The order's columns a caller may set (``status``, ``source`` and the times are set here)."""

STEP_COLUMNS = (
    "step_id", "station_ae_title", "station_name", "modality", "start_date", "start_time",
    "description", "performing_physician_name", "status",
)
"""A step's columns a caller may set."""

_LIKE_ESCAPE = "\\"


@dataclass(frozen=True)
class StepRecord:
    """One scheduled procedure step, as stored (one Modality Worklist entry)."""

    step_id: str
    station_ae_title: str | None
    station_name: str | None
    modality: str | None
    start_date: str | None
    start_time: str | None
    description: str | None
    performing_physician_name: str | None
    status: str
    updated_at: datetime


@dataclass(frozen=True)
class OrderRecord:
    """One imaging order (one requested procedure) with its steps, in step id order."""

    id: int
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    requested_procedure_id: str | None
    requested_procedure_description: str | None
    study_instance_uid: str
    placer_order_number: str | None
    filler_order_number: str | None
    referring_physician_name: str | None
    status: str
    source: str
    created_at: datetime
    updated_at: datetime
    steps: tuple[StepRecord, ...]


@dataclass(frozen=True)
class OrderFilter:
    """What :meth:`OrderRecords.list` matches: every given criterion (AND).

    ``patient_id`` and ``patient_name`` are prefixes (``*`` inside is a wildcard; the name is
    compared in its match form); ``date_from`` / ``date_to`` (YYYYMMDD, inclusive) select
    orders with at least one step starting in that range."""

    status: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    limit: int = 100
    offset: int = 0


def _utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes (what was written was UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _step(row: Any) -> StepRecord:
    return StepRecord(
        step_id=row.step_id, station_ae_title=row.station_ae_title,
        station_name=row.station_name, modality=row.modality, start_date=row.start_date,
        start_time=row.start_time, description=row.description,
        performing_physician_name=row.performing_physician_name, status=row.status,
        updated_at=_utc(row.updated_at),
    )


def _order(row: Any, steps: Iterable[StepRecord]) -> OrderRecord:
    return OrderRecord(
        id=row.id, **{name: getattr(row, name) for name in ORDER_COLUMNS},
        status=row.status, source=row.source, created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at), steps=tuple(steps),
    )


def _order_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The given order columns, with the name's match form beside the name."""
    row = {name: values[name] for name in ORDER_COLUMNS if name in values}
    if "patient_name" in row:
        name = row["patient_name"]
        row["patient_name_norm"] = normalize_text(name) if name else None
    if "issuer_of_patient_id" in row and row["issuer_of_patient_id"] is None:
        row["issuer_of_patient_id"] = ""  # NOT NULL, as the patient table keeps it
    return row


def _step_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in STEP_COLUMNS if name in values}


def _prefix(text: str) -> str:
    escaped = (text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
    return f"{escaped.replace('*', '%')}%"


class OrderRecords:
    """Order reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # -- writes -----------------------------------------------------------------------------
    def claim(self, *keys: str) -> None:
        """Hold ``keys`` (an AccessionNumber, a Study Instance UID) until the transaction
        ends, so that two writers checking that no other order has one take turns: a
        transaction-scoped advisory lock on PostgreSQL; nothing on SQLite, whose writers take
        turns already (one at a time per index)."""
        if self.connection.dialect.name != "postgresql":
            return
        for key in sorted(set(keys)):  # one order, so that two claimers never deadlock
            self.connection.execute(select(func.pg_advisory_xact_lock(
                func.hashtextextended(f"imaging_order:{key}", 0))))

    def create(self, values: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], *,
               status: str, source: str) -> OrderRecord:
        """Insert an order and its steps; a Study Instance UID that another order has, or
        two steps with one id, raise ``IndexDataError`` when the unit of work ends."""
        now = datetime.now(UTC)
        order_id = int(self.connection.execute(
            insert(imaging_order).values(
                **_order_values(values), status=status, source=source, created_at=now,
                updated_at=now,
            ).returning(imaging_order.c.id)
        ).scalar_one())
        self._insert_steps(order_id, steps, now)
        found = self.get(order_id)
        assert found is not None
        return found

    def update(self, order_id: int, values: Mapping[str, Any]) -> bool:
        """Set the given order columns (the others stay); False when there is no such order."""
        changed = self.connection.execute(
            update(imaging_order).where(imaging_order.c.id == order_id).values(
                **_order_values(values), updated_at=datetime.now(UTC))
        )
        return bool(changed.rowcount)

    def upsert_steps(self, order_id: int, steps: Sequence[Mapping[str, Any]]) -> None:
        """Each step updates the order's step with its ``step_id`` (the given columns only),
        or is inserted when the order has none with that id."""
        now = datetime.now(UTC)
        known = set(self.connection.execute(
            select(procedure_step.c.step_id).where(procedure_step.c.order_fk == order_id)
        ).scalars())
        new = []
        for step in steps:
            if step["step_id"] in known:
                self.connection.execute(
                    update(procedure_step).where(
                        procedure_step.c.order_fk == order_id,
                        procedure_step.c.step_id == step["step_id"],
                    ).values(**_step_values(step), updated_at=now)
                )
            else:
                new.append(step)
        self._insert_steps(order_id, new, now)

    def remove_steps(self, order_id: int, keep: Iterable[str]) -> int:
        """Delete the order's steps whose id is not in ``keep``; how many."""
        kept = list(keep)
        removed = self.connection.execute(
            delete(procedure_step).where(
                procedure_step.c.order_fk == order_id, procedure_step.c.step_id.not_in(kept))
        )
        return int(removed.rowcount)

    def set_status(self, order_id: int, status: str, *, step_status: str | None = None) -> bool:
        """Set the order's status (and every step's, when ``step_status`` is given); False
        when there is no such order."""
        now = datetime.now(UTC)
        changed = self.connection.execute(
            update(imaging_order).where(imaging_order.c.id == order_id)
            .values(status=status, updated_at=now)
        )
        if changed.rowcount and step_status is not None:
            self.connection.execute(
                update(procedure_step).where(procedure_step.c.order_fk == order_id)
                .values(status=step_status, updated_at=now)
            )
        return bool(changed.rowcount)

    def set_step_status(self, order_id: int, step_id: str, status: str) -> bool:
        """Set one step's ScheduledProcedureStepStatus; False when the order has no such
        step."""
        changed = self.connection.execute(
            update(procedure_step).where(
                procedure_step.c.order_fk == order_id, procedure_step.c.step_id == step_id,
            ).values(status=status, updated_at=datetime.now(UTC))
        )
        return bool(changed.rowcount)

    def _insert_steps(self, order_id: int, steps: Sequence[Mapping[str, Any]],
                      now: datetime) -> None:
        if steps:
            self.connection.execute(insert(procedure_step), [
                {**dict.fromkeys(STEP_COLUMNS), **_step_values(step),
                 "order_fk": order_id, "updated_at": now}
                for step in steps
            ])

    # -- reads ------------------------------------------------------------------------------
    def get(self, order_id: int) -> OrderRecord | None:
        found = self._orders(imaging_order.c.id == order_id)
        return found[0] if found else None

    def list(self, criteria: OrderFilter) -> builtins.list[OrderRecord]:
        """Orders matching ``criteria``, newest first (by id), one page of them."""
        where: builtins.list[ColumnElement[bool]] = []
        if criteria.status:
            where.append(imaging_order.c.status == criteria.status)
        if criteria.patient_id:
            where.append(imaging_order.c.patient_id.like(_prefix(criteria.patient_id),
                                                         escape=_LIKE_ESCAPE))
        if criteria.patient_name:
            where.append(imaging_order.c.patient_name_norm.like(
                _prefix(normalize_text(criteria.patient_name)), escape=_LIKE_ESCAPE))
        if criteria.accession_number:
            where.append(imaging_order.c.accession_number == criteria.accession_number)
        if criteria.date_from or criteria.date_to:
            in_range: builtins.list[ColumnElement[bool]] = [
                procedure_step.c.order_fk == imaging_order.c.id]
            if criteria.date_from:
                in_range.append(procedure_step.c.start_date >= criteria.date_from)
            if criteria.date_to:
                in_range.append(procedure_step.c.start_date <= criteria.date_to)
            where.append(exists().where(*in_range))
        return self._orders(*where, limit=criteria.limit, offset=criteria.offset)

    def by_accession_number(self, accession_number: str) -> builtins.list[OrderRecord]:
        """Every order with this AccessionNumber (cancelled ones too), oldest first."""
        return self._orders(imaging_order.c.accession_number == accession_number, oldest=True)

    def by_study_instance_uid(self, study_instance_uid: str) -> OrderRecord | None:
        """The order of this StudyInstanceUID (unique among orders, cancelled ones too)."""
        found = self._orders(imaging_order.c.study_instance_uid == study_instance_uid)
        return found[0] if found else None

    def by_order_number(self, *, placer: str | None = None,
                        filler: str | None = None) -> builtins.list[OrderRecord]:
        """Orders with this placer and/or filler order number (ORC-2 / ORC-3), oldest
        first; both None: none."""
        where: builtins.list[ColumnElement[bool]] = []
        if placer:
            where.append(imaging_order.c.placer_order_number == placer)
        if filler:
            where.append(imaging_order.c.filler_order_number == filler)
        return self._orders(*where, oldest=True) if where else []

    def _orders(self, *where: ColumnElement[bool], limit: int | None = None,
                offset: int = 0, oldest: bool = False) -> builtins.list[OrderRecord]:
        statement = select(imaging_order).where(*where).order_by(
            imaging_order.c.id if oldest else imaging_order.c.id.desc())
        if limit is not None:
            statement = statement.limit(limit)
        if offset:
            statement = statement.offset(offset)
        rows = list(self.connection.execute(statement))
        if not rows:
            return []
        steps: dict[int, list[StepRecord]] = {row.id: [] for row in rows}
        for start in range(0, len(rows), 500):
            ids = [row.id for row in rows[start:start + 500]]
            for step in self.connection.execute(
                select(procedure_step).where(procedure_step.c.order_fk.in_(ids))
                .order_by(procedure_step.c.order_fk, procedure_step.c.id)
            ):
                steps[step.order_fk].append(_step(step))
        return [_order(row, steps[row.id]) for row in rows]
