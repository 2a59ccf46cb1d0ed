"""All SQL of the index. Repositories flush, never commit: the unit of work commits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from storage.attributes import Level
from storage.blobs import BlobInfo
from storage.index.application_entities import AeRecords
from storage.index.audit import AuditRecords
from storage.index.audit_feed import AuditFeed
from storage.index.changes import ChangeRecords
from storage.index.commitment import CommitmentRecords
from storage.index.errors import IndexDataError
from storage.index.findings import FindingRecords
from storage.index.gauges import GaugeRecords
from storage.index.jobs import JobRecords
from storage.index.matching import LIST_SEPARATOR, find_statement, instances_statement
from storage.index.models import (
    TABLES,
    instance,
    patient,
    request_attribute,
    series,
    study,
)
from storage.index.mpps import MppsRecords
from storage.index.orders import OrderRecords
from storage.index.sessions import SessionRecords
from storage.index.sign_ins import SignInRecords
from storage.index.studies import StudyRecords
from storage.index.tokens import TokenRecords
from storage.index.worklist import WorklistRecords
from storage.query import MULTI_VALUED_KEYS, UNIQUE_KEYS, Query, RetrieveItem


class UpsertOutcome(StrEnum):
    INSERTED = "inserted"
    ALREADY_PRESENT = "already_present"
    REPLACED = "replaced"


@dataclass(frozen=True)
class InstanceRow:
    """Everything the index stores of one instance, by level (protocol neutral)."""

    values: Mapping[Level, Mapping[str, Any]]
    request_attributes: list[dict[str, Any]]
    transfer_syntax_uid: str
    blob: BlobInfo
    source_ae: str | None = None


@dataclass(frozen=True)
class FiledPatient:
    """The patient row a study is filed under, as the index had it before this instance."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_name_norm: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    existed: bool  # the row was there before this instance (False: created by it)
    archived_studies: int  # archived studies of this patient other than the instance's own


@dataclass(frozen=True)
class UpsertResult:
    outcome: UpsertOutcome
    study_instance_uid: str
    study_state: str  # the workflow state of the instance's study
    new_study: bool
    existing_blob_key: str | None = None
    replaced_blob_key: str | None = None
    patient: FiledPatient | None = None


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    blob_key: str
    blob_size: int
    blob_sha256: str
    transfer_syntax_uid: str


class Repository:
    """Index reads and writes on one connection inside one transaction."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._dialect = connection.dialect.name
        self.studies = StudyRecords(connection)
        self.findings = FindingRecords(connection)
        self.audit = AuditRecords(connection)
        self.jobs = JobRecords(connection)
        self.tokens = TokenRecords(connection)
        self.audit_feed = AuditFeed(connection)
        self.application_entities = AeRecords(connection)
        self.sessions = SessionRecords(connection)
        self.sign_ins = SignInRecords(connection)
        self.gauges = GaugeRecords(connection)
        self.orders = OrderRecords(connection)
        self.worklist = WorklistRecords(connection)
        self.mpps = MppsRecords(connection)
        self.commitments = CommitmentRecords(connection)
        self.changes = ChangeRecords(connection)

    # -- ingest --------------------------------------------------------------------------
    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction that fails on its own: what the block wrote is rolled
        back if it raises, the rest of the transaction goes on. A value the database refuses
        is raised as :class:`IndexDataError`; losing the database aborts the whole transaction
        as usual."""
        nested = self.connection.begin_nested()
        try:
            yield
        except (OperationalError, InterfaceError):
            raise
        except DBAPIError as exc:
            nested.rollback()
            raise IndexDataError(str(exc.orig)) from exc
        except BaseException:
            nested.rollback()
            raise
        nested.commit()

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        row = self.connection.execute(
            _stored_instance_select().where(instance.c.sop_instance_uid == sop_instance_uid)
        ).first()
        return _stored(row) if row else None

    def upsert_instance(
        self, row: InstanceRow, *, initial_state: str, overwrite: bool,
        visible_states: frozenset[str],
    ) -> UpsertResult:
        """Insert an instance with its patient, study and series (each created if missing).

        A new study starts in ``initial_state``; ``visible_states``: the states in which a
        patient's other studies count as archived (:attr:`FiledPatient.archived_studies`).

        Safe against concurrent writers of the same patient/study/series: ``INSERT ... ON
        CONFLICT DO NOTHING`` then a read, so a race never makes a second row. The common case
        (the series exists) costs two statements.
        """
        values = row.values
        series_uid = values[Level.SERIES]["series_instance_uid"]
        known = self.connection.execute(_SERIES_BY_UID, {"uid": series_uid}).first()
        if known is not None:
            series_id, study_uid, state, new_study = known.id, known.study_uid, known.state, False
            filed = _filed(known, existed=True, archived_studies=0)
            if known.stable_at is not None:  # an instance after stability: unstable again
                self.connection.execute(
                    update(study).where(study.c.study_instance_uid == study_uid)
                    .values(stable_at=None)
                )
        else:
            series_id, study_uid, state, new_study, filed = self._create_series(
                row, initial_state, visible_states
            )
        instance_values = instance_row(row, series_fk=series_id, at=datetime.now(UTC))
        study_state = str(state)
        inserted = self.connection.execute(self._insert_ignore(instance), instance_values)
        if inserted.first() is not None:
            return UpsertResult(UpsertOutcome.INSERTED, study_uid, study_state, new_study,
                                patient=filed)
        existing = self.connection.execute(
            _INSTANCE_BLOB, {"uid": instance_values["sop_instance_uid"]}
        ).one()
        if not overwrite:
            return UpsertResult(
                UpsertOutcome.ALREADY_PRESENT, study_uid, study_state, new_study, existing.blob_key,
                patient=filed,
            )
        self.connection.execute(
            update(instance).where(instance.c.id == existing.id).values(instance_values)
        )
        old_key = existing.blob_key if existing.blob_key != row.blob.key else None
        return UpsertResult(
            UpsertOutcome.REPLACED, study_uid, study_state, new_study, existing.blob_key, old_key,
            patient=filed,
        )

    def _create_series(
        self, row: InstanceRow, initial_state: str, visible_states: frozenset[str]
    ) -> tuple[int, str, str, bool, FiledPatient]:
        values = row.values
        patient_id, patient_created = self._get_or_create(patient, patient_row(values))
        study_values = study_row(values, patient_fk=patient_id, state=initial_state,
                                 at=datetime.now(UTC))
        study_id, new_study = self._get_or_create(study, study_values)
        series_id, new_series = self._get_or_create(series, series_row(values, study_fk=study_id))
        if new_series and row.request_attributes:
            self.connection.execute(
                insert(request_attribute), request_attribute_rows(row, series_fk=series_id)
            )
        filed_row = self.connection.execute(_STUDY_PATIENT, {"study_id": study_id}).one()
        if not new_study and filed_row.stable_at is not None:
            self.connection.execute(
                update(study).where(study.c.id == study_id).values(stable_at=None)
            )
        archived = 0
        if not patient_created and visible_states:
            archived = int(self.connection.execute(
                select(func.count()).select_from(study).where(
                    study.c.patient_fk == filed_row.patient_pk, study.c.id != study_id,
                    study.c.state.in_(sorted(visible_states)),
                )
            ).scalar_one())
        filed = _filed(filed_row, existed=not (patient_created and new_study),
                       archived_studies=archived)
        return (series_id, str(study_values["study_instance_uid"]), filed_row.state, new_study,
                filed)

    def _get_or_create(self, table: Table, values: Mapping[str, Any]) -> tuple[int, bool]:
        """The id of the row with these natural keys, inserted if missing; and if it was."""
        keys = _NATURAL_KEYS[table.name]
        where = [table.c[key] == values[key] for key in keys]
        found = self.connection.execute(select(table.c.id).where(*where)).scalar()
        if found is not None:
            return int(found), False
        created = self.connection.execute(
            self._insert_ignore(table), insert_values(table, values)
        ).scalar()
        if created is not None:
            return int(created), True
        return int(self.connection.execute(select(table.c.id).where(*where)).scalar_one()), False

    def _insert_ignore(self, table: Table) -> Any:
        return _insert_ignore(self._dialect, table.name)

    # -- query/retrieve (PS3.4 C.2.2.2 matching, in the query's visible studies only) ----
    def find(self, query: Query) -> Iterator[dict[str, Any]]:
        """One dict per entity at ``query.level``, in index order, fetched in batches.

        Keys: the unique keys of the level and the levels above (``PatientID``,
        ``StudyInstanceUID``, ...) and every ``query.return_keys`` entry, keyword → value:
        ``str`` for text, dates, times and UIDs (UTF-8, as received, not the match form),
        ``int`` for IS/US values and computed counts, ``float`` for DS, None when unknown or
        not available at this level. ``ModalitiesInStudy`` and ``SOPClassesInStudy`` are a
        sorted ``list[str]`` (empty when there is none; None in a PATIENT level query).
        One SQL statement.
        """
        statement = find_statement(query, self._dialect)
        if query.limit is None or query.limit > _BATCH:
            # a large page streams (a server-side cursor on PostgreSQL); a small one is read in
            # one round trip, which is what QueryService's batches are
            statement = statement.execution_options(yield_per=_BATCH)
        keys = list(dict.fromkeys((*UNIQUE_KEYS[query.level], *query.return_keys)))
        for row in self.connection.execute(statement):
            yield _response(keys, row._mapping)

    def instances_for(self, query: Query) -> list[RetrieveItem]:
        """Every instance under the entities ``query`` matches, ordered by study, series,
        InstanceNumber, then arrival; ``query.limit``/``offset`` count entities, not instances."""
        return [
            RetrieveItem(
                sop_class_uid=row.sop_class_uid,
                sop_instance_uid=row.sop_instance_uid,
                transfer_syntax_uid=row.transfer_syntax_uid,
                blob_key=row.blob_key,
                blob_size=int(row.blob_size),
                study_instance_uid=row.study_instance_uid,
                series_instance_uid=row.series_instance_uid,
            )
            for row in self.connection.execute(instances_statement(query))
        ]

    def blob_keys_for(self, query: Query) -> list[str]:
        """The blob keys of :meth:`instances_for`, in its order (a content stamp: ETags)."""
        return list(self.connection.execute(
            instances_statement(query, keys_only=True)).scalars())

    # -- consistency (pacs check) ---------------------------------------------------------
    def iter_instances(self) -> Iterator[StoredInstance]:
        for row in self.connection.execute(_stored_instance_select().order_by(instance.c.id)):
            yield _stored(row)

    def newest_instances(self, limit: int, *, since: datetime) -> list[StoredInstance]:
        """The ``limit`` instances received (or replaced) last, not before ``since``, newest
        first."""
        rows = self.connection.execute(
            _stored_instance_select()
            .where(instance.c.received_at >= since)
            .order_by(instance.c.received_at.desc())
            .limit(limit)
        )
        return [_stored(row) for row in rows]

    def blob_referenced(self, key: str) -> bool:
        """An instance's file, or a file a correction replaced (kept until the purge)."""
        return self.studies.blob_in_use(key)

    def delete_instances(self, sop_instance_uids: list[str]) -> int:
        """Delete instances, then any series, study and patient left empty."""
        if not sop_instance_uids:
            return 0
        deleted = 0
        for start in range(0, len(sop_instance_uids), 500):
            chunk = sop_instance_uids[start : start + 500]
            deleted += self.connection.execute(
                delete(instance).where(instance.c.sop_instance_uid.in_(chunk))
            ).rowcount
        self._delete_empty()
        return deleted

    def _delete_empty(self) -> None:
        self.connection.execute(
            delete(series).where(~exists().where(instance.c.series_fk == series.c.id))
        )
        self.connection.execute(
            delete(study).where(~exists().where(series.c.study_fk == study.c.id))
        )
        self.connection.execute(
            delete(patient).where(~exists().where(study.c.patient_fk == patient.c.id))
        )

    def patient_names(self, patient_ids: list[str]) -> dict[str, str | None]:
        rows = self.connection.execute(
            select(patient.c.patient_id, patient.c.patient_name).where(
                patient.c.patient_id.in_(patient_ids)
            )
        )
        return {row.patient_id: row.patient_name for row in rows}

    def counts(self) -> dict[Level, int]:
        return {
            level: int(
                self.connection.execute(select(func.count()).select_from(table)).scalar_one()
            )
            for level, table in TABLES.items()
        }


# -- the rows an instance makes, level by level: what ``upsert_instance`` inserts (a bulk
# loader that writes these same dicts writes what ingest would have written)


def patient_row(values: Mapping[Level, Mapping[str, Any]]) -> dict[str, Any]:
    """The patient's row: PatientID and IssuerOfPatientID '' when absent (NULLs never
    collide in the unique key)."""
    row = dict(values[Level.PATIENT])
    row["patient_id"] = row.get("patient_id") or ""
    row["issuer_of_patient_id"] = row.get("issuer_of_patient_id") or ""
    return row


def study_row(
    values: Mapping[Level, Mapping[str, Any]], *, patient_fk: int, state: str,
    at: datetime,
) -> dict[str, Any]:
    """A new study's row, in the workflow state new studies start in, as of ``at``."""
    return {**values[Level.STUDY], "patient_fk": patient_fk, "state": str(state),
            "state_changed_at": at}


def series_row(values: Mapping[Level, Mapping[str, Any]], *, study_fk: int) -> dict[str, Any]:
    return {**values[Level.SERIES], "study_fk": study_fk}


def request_attribute_rows(row: InstanceRow, *, series_fk: int) -> list[dict[str, Any]]:
    """A new series' RequestAttributesSequence items (from its first instance)."""
    return [{**item, "series_fk": series_fk} for item in row.request_attributes]


def instance_row(row: InstanceRow, *, series_fk: int, at: datetime) -> dict[str, Any]:
    """The instance's row, received ``at``."""
    return {
        **row.values[Level.IMAGE],
        "series_fk": series_fk,
        "transfer_syntax_uid": row.transfer_syntax_uid,
        "blob_key": row.blob.key,
        "blob_size": row.blob.size,
        "blob_sha256": row.blob.sha256,
        "source_ae": row.source_ae,
        "received_at": at,
    }


def insert_values(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """What an insert of ``values`` names: every column but ``id``, None for those not given,
    except the columns with a default, left to it (``created_at``, ``rejected``)."""
    return {name: values.get(name) for name, has_default in _insert_columns(table)
            if not has_default or name in values}


@cache
def _insert_columns(table: Table) -> tuple[tuple[str, bool], ...]:
    """(name, has a default) of every column but ``id``, in table order."""
    return tuple((column.name, column.default is not None) for column in table.columns
                 if column.name != "id")


_NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "patient": ("patient_id", "issuer_of_patient_id"),
    "study": ("study_instance_uid",),
    "series": ("series_instance_uid",),
    "instance": ("sop_instance_uid",),
}
_BY_NAME: dict[str, Table] = {"patient": patient, "study": study, "series": series,
                              "instance": instance}

# Built once: executing a prebuilt statement skips most of SQLAlchemy's per-call construction.
_PATIENT_FACTS = (
    patient.c.patient_id, patient.c.issuer_of_patient_id, patient.c.patient_name,
    patient.c.patient_name_norm, patient.c.patient_birth_date, patient.c.patient_sex,
)
_SERIES_BY_UID = (
    select(series.c.id, study.c.study_instance_uid.label("study_uid"), study.c.state,
           study.c.stable_at, *_PATIENT_FACTS)
    .join(study, series.c.study_fk == study.c.id)
    .join(patient, study.c.patient_fk == patient.c.id)
    .where(series.c.series_instance_uid == bindparam("uid"))
)
_STUDY_PATIENT = (
    select(study.c.state, study.c.stable_at, patient.c.id.label("patient_pk"), *_PATIENT_FACTS)
    .join(patient, study.c.patient_fk == patient.c.id)
    .where(study.c.id == bindparam("study_id"))
)


def _filed(row: Any, *, existed: bool, archived_studies: int) -> FiledPatient:
    return FiledPatient(
        patient_id=row.patient_id,
        issuer_of_patient_id=row.issuer_of_patient_id,
        patient_name=row.patient_name,
        patient_name_norm=row.patient_name_norm,
        patient_birth_date=row.patient_birth_date,
        patient_sex=row.patient_sex,
        existed=existed,
        archived_studies=archived_studies,
    )
_INSTANCE_BLOB = select(instance.c.id, instance.c.blob_key).where(
    instance.c.sop_instance_uid == bindparam("uid")
)


@cache
def _insert_ignore(dialect_name: str, table_name: str) -> Any:
    """``INSERT ... ON CONFLICT (natural key) DO NOTHING RETURNING id`` (SQLite, PostgreSQL).

    A row comes back only when one was inserted (``rowcount`` is not reliable here: psycopg
    reports -1).
    """
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    table = _BY_NAME[table_name]
    return (
        dialect.insert(table)
        .on_conflict_do_nothing(index_elements=list(_NATURAL_KEYS[table_name]))
        .returning(table.c.id)
    )


def _stored_instance_select() -> Any:
    return (
        select(
            instance.c.sop_instance_uid,
            study.c.study_instance_uid,
            series.c.series_instance_uid,
            instance.c.blob_key,
            instance.c.blob_size,
            instance.c.blob_sha256,
            instance.c.transfer_syntax_uid,
        )
        .join(series, instance.c.series_fk == series.c.id)
        .join(study, series.c.study_fk == study.c.id)
    )


_BATCH = 500
_EMPTY_IS_UNKNOWN = frozenset({"PatientID", "IssuerOfPatientID"})  # stored as '' (NOT NULL)


def _response(keys: list[str], row: Any) -> dict[str, Any]:
    """A row as keyword → value; None for keys the statement could not return."""
    response: dict[str, Any] = {}
    for key in keys:
        value = row.get(key)
        if key in MULTI_VALUED_KEYS and key in row:
            value = sorted(value.split(LIST_SEPARATOR)) if value else []
        elif key in _EMPTY_IS_UNKNOWN and value == "":
            value = None
        response[key] = value
    return response


def _stored(row: Any) -> StoredInstance:
    return StoredInstance(
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        blob_key=row.blob_key,
        blob_size=row.blob_size,
        blob_sha256=row.blob_sha256,
        transfer_syntax_uid=row.transfer_syntax_uid,
    )
