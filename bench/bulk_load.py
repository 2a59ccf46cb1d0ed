"""Bulk loading of the benchmarks' index: the rows ingest writes, written many at a time.

``Repository.upsert_instance`` costs a few round trips an instance (about 650 instances/s on
PostgreSQL here), so a 1,000,000-instance index would take 25 minutes to fill that way. This
loader writes the same rows in bulk: PostgreSQL ``COPY`` (psycopg), SQLite ``executemany``
INSERTs through SQLAlchemy Core, both with the index's own table objects.

The same rows: each row dict comes from the repository's own row builders
(``storage.index.repository.patient_row``, ``study_row``, ``series_row``,
``request_attribute_rows``, ``instance_row``, ``insert_values``), fed with the same
``InstanceRow`` values, and patients, studies and series are created the way
``upsert_instance`` creates them: on their first instance, from its values; a patient already
in the index is reused as it is. Only what the database would fill in by itself is done here:
ids (numbered on from the largest in each table; PostgreSQL's sequences set past them
afterwards) and the column defaults (``created_at``, ``rejected``), taken from the table
objects. Counts, ModalitiesInStudy and the other computed keys are not stored anywhere: the
query compiler derives them in SQL, so they follow from the rows. tests/bench/test_bulk_load.py
checks that an index loaded here answers C-FIND and QIDO-RS queries as one filled through
``upsert_instance`` does.

A bench tool, not the product's: it adds new studies only (a study already in the index is a
unique-key error, not a merge), and it trusts its input (no QA gate, no audit rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.engine import Connection

from pacs.services.workflow import StudyState
from storage.attributes import Level
from storage.index import Index, InstanceRow
from storage.index.models import instance, patient, request_attribute, series, study
from storage.index.repository import (
    insert_values,
    instance_row,
    patient_row,
    request_attribute_rows,
    series_row,
    study_row,
)

CHUNK = 20_000  # instances per transaction (and per COPY of each table)
_TABLES: tuple[Table, ...] = (patient, study, series, request_attribute, instance)


@dataclass
class LoadResult:
    instances: int
    studies: int
    seconds: float


def bulk_load(
    index: Index,
    rows: Iterable[InstanceRow],
    *,
    initial_state: StudyState = StudyState.ARCHIVED,
    stable_at: datetime | None = None,
    chunk: int | None = None,
) -> LoadResult:
    """Write the rows of ``rows`` (new studies only) into ``index``, one transaction per
    ``chunk`` instances. ``initial_state``: what ingest gives a new study;
    ``stable_at``: the studies' stability time (None: not yet stable, as after a store);
    ``chunk``: default :data:`CHUNK`."""
    chunk = chunk or CHUNK
    start = time.perf_counter()
    with index.engine.connect() as connection:
        loader = _Loader(connection, initial_state, stable_at)
        batch: list[InstanceRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= chunk:
                loader.write(batch)
                batch.clear()
        if batch:
            loader.write(batch)
        loader.finish()
    return LoadResult(loader.instances, len(loader.study_ids), time.perf_counter() - start)


@cache
def _defaults(table: Table) -> tuple[tuple[str, Callable[[], Any]], ...]:
    """The column defaults SQLAlchemy applies to an insert that leaves a column out."""
    out: list[tuple[str, Callable[[], Any]]] = []
    for column in table.columns:
        default: Any = column.default
        if default is None:
            continue
        if default.is_callable:
            out.append((column.name, partial(default.arg, None)))
        else:
            out.append((column.name, partial(lambda value: value, default.arg)))
    return tuple(out)


class _Loader:
    def __init__(
        self, connection: Connection, initial_state: StudyState, stable_at: datetime | None
    ) -> None:
        self.connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        self.initial_state = initial_state
        self.stable_at = stable_at
        self.next_id = {
            table.name: int(connection.execute(
                select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1
            for table in _TABLES
        }
        self.patients: dict[tuple[str, str], int] = {
            (r.patient_id, r.issuer_of_patient_id): r.id
            for r in connection.execute(
                select(patient.c.id, patient.c.patient_id, patient.c.issuer_of_patient_id))
        }
        connection.rollback()  # (the reads above began a transaction)
        self.study_ids: dict[str, int] = {}
        self.series_ids: dict[str, int] = {}
        self.instances = 0

    def write(self, batch: list[InstanceRow]) -> None:
        now = datetime.now(UTC)
        out: dict[str, list[dict[str, Any]]] = {table.name: [] for table in _TABLES}
        for row in batch:
            values = row.values
            series_uid = values[Level.SERIES]["series_instance_uid"]
            series_id = self.series_ids.get(series_uid)
            if series_id is None:
                series_id = self._new_series(row, now, out)
            out["instance"].append(self._full(
                instance, self._id(instance), instance_row(row, series_fk=series_id, at=now), now
            ))
        with self.connection.begin():
            for table in _TABLES:
                self._insert(table, out[table.name])
        self.instances += len(batch)

    def _new_series(
        self, row: InstanceRow, now: datetime, out: dict[str, list[dict[str, Any]]]
    ) -> int:
        """The rows ``upsert_instance`` creates for the first instance of a series."""
        values = row.values
        patient_values = patient_row(values)
        key = (patient_values["patient_id"], patient_values["issuer_of_patient_id"])
        patient_id = self.patients.get(key)
        if patient_id is None:
            patient_id = self.patients[key] = self._id(patient)
            out["patient"].append(self._full(patient, patient_id, patient_values, now))
        study_uid = values[Level.STUDY]["study_instance_uid"]
        study_id = self.study_ids.get(study_uid)
        if study_id is None:
            study_id = self.study_ids[study_uid] = self._id(study)
            study_values = study_row(values, patient_fk=patient_id, state=self.initial_state,
                                     at=now)
            out["study"].append(self._full(
                study, study_id, {**study_values, "stable_at": self.stable_at}, now
            ))
        series_id = self._id(series)
        self.series_ids[values[Level.SERIES]["series_instance_uid"]] = series_id
        out["series"].append(
            self._full(series, series_id, series_row(values, study_fk=study_id), now)
        )
        for item in request_attribute_rows(row, series_fk=series_id):
            out["request_attribute"].append(
                self._full(request_attribute, self._id(request_attribute), item, now)
            )
        return series_id

    def _id(self, table: Table) -> int:
        value = self.next_id[table.name]
        self.next_id[table.name] = value + 1
        return value

    @staticmethod
    def _full(
        table: Table, row_id: int, values: Mapping[str, Any], now: datetime
    ) -> dict[str, Any]:
        """Every column: the values an insert names (``insert_values``), the id, and the
        defaults the insert would have left to the table (``created_at`` is ``now``)."""
        row = insert_values(table, values)
        row["id"] = row_id
        for name, default in _defaults(table):
            if name not in row:
                row[name] = now if name == "created_at" else default()
        return row

    def _insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if not self.postgres:
            self.connection.execute(insert(table), rows)
            return
        names = [column.name for column in table.columns]
        raw = self.connection.connection.driver_connection
        assert raw is not None
        quoted = ", ".join(f'"{name}"' for name in names)
        with raw.cursor() as cursor, cursor.copy(
            f'COPY "{table.name}" ({quoted}) FROM STDIN'
        ) as copy:
            for row in rows:
                copy.write_row([row[name] for name in names])

    def finish(self) -> None:
        """PostgreSQL: each id sequence past the ids written here (SQLite numbers on from the
        largest rowid by itself)."""
        if not self.postgres:
            return
        with self.connection.begin():
            for table in _TABLES:
                self.connection.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"(SELECT coalesce(max(id), 0) + 1 FROM \"{table.name}\"), false)"
                ))
