"""Tables patient → study → series → instance, one column per registry attribute.

Built with SQLAlchemy Core from :mod:`storage.attributes`, so the registry is the one place that
says which attributes are indexed; Alembic migrations are checked against this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeEngine

from storage.attributes import (
    BY_LEVEL,
    COLUMN_LENGTH,
    REQUEST_ATTRIBUTES,
    Attribute,
    Level,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def utc_now() -> datetime:
    return datetime.now(UTC)


_now = utc_now


def _type(attribute: Attribute) -> TypeEngine[Any]:
    if attribute.vr in {"IS", "US"}:
        return Integer()
    if attribute.vr == "DS":
        return Float()
    if attribute.vr in {"LT", "UT"}:
        return Text()
    return String(COLUMN_LENGTH.get(attribute.vr, 64))


# Text that wildcard matching compares with LIKE 'abc%'. On PostgreSQL a plain b-tree index
# serves such a prefix only under the C collation; the pattern operator class serves it under
# any collation (and still serves '='). These columns are never range matched or sorted on.
_PATTERN_VRS = frozenset({"PN", "LO", "SH", "CS", "AE"})


def _pattern_index(table_name: str, column: str) -> Index:
    return Index(
        f"ix_{table_name}_{column}", column, postgresql_ops={column: "varchar_pattern_ops"}
    )


def _columns(
    table_name: str,
    attributes: tuple[Attribute, ...],
    *,
    skip: frozenset[str] = frozenset(),
    unindexed: frozenset[str] = frozenset(),
) -> list[Column[object] | Index]:
    """A column per attribute (indexed unless long text or ``unindexed``), plus its
    match-form column."""
    columns: list[Column[object] | Index] = []
    for attribute in attributes:
        if attribute.column in skip:
            continue
        if attribute.column in unindexed:
            columns.append(Column(attribute.column, _type(attribute)))
            if attribute.normalized:
                columns.append(Column(attribute.normalized, _type(attribute)))
            continue
        pattern = attribute.vr in _PATTERN_VRS
        indexed = attribute.vr not in {"LT", "UT"} and not pattern
        columns.append(Column(attribute.column, _type(attribute), index=indexed))
        if pattern:
            columns.append(_pattern_index(table_name, attribute.column))
        if attribute.normalized:
            columns.append(Column(attribute.normalized, _type(attribute), index=not pattern))
            if pattern:
                columns.append(_pattern_index(table_name, attribute.normalized))
    return columns


_KEYS = frozenset(
    {"patient_id", "issuer_of_patient_id", "study_instance_uid", "series_instance_uid",
     "sop_instance_uid"}
)

patient = Table(
    "patient",
    metadata,
    Column("id", Integer, primary_key=True),
    # Identity of a patient: PatientID + IssuerOfPatientID, '' when absent (NULLs never collide).
    Column("patient_id", String(64), nullable=False),
    _pattern_index("patient", "patient_id"),
    Column("issuer_of_patient_id", String(64), nullable=False),
    *_columns("patient", BY_LEVEL[Level.PATIENT], skip=_KEYS),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    UniqueConstraint("patient_id", "issuer_of_patient_id"),
)

study = Table(
    "study",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_fk", ForeignKey("patient.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    *_columns("study", BY_LEVEL[Level.STUDY], skip=_KEYS),
    # the workflow state (pacs.services.workflow.StudyState), written by the workflow alone
    Column("state", String(16), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    # QA workflow: when the state last changed, why a study was rejected, and when it became
    # stable (no instance for the stability period; NULL while instances may still arrive).
    Column("state_changed_at", DateTime(timezone=True)),
    Column("rejection_reason", Text),
    Column("stable_at", DateTime(timezone=True), index=True),
    # background work on the study (its stability check, its purge): the server doing it and
    # until when; renewed while it works, claimed by another server once it ran out
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime(timezone=True)),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_fk", ForeignKey("study.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    *_columns("series", BY_LEVEL[Level.SERIES], skip=_KEYS),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    # rejected from a viewer (KOS "113001^DCM"): hidden from every read path like its study
    Column("rejected", Boolean, nullable=False, default=False, server_default=false()),
)

request_attribute = Table(
    "request_attribute",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_fk", ForeignKey("series.id", ondelete="CASCADE"), nullable=False, index=True),
    *_columns("request_attribute", REQUEST_ATTRIBUTES),
)

# Image-level attributes are matched within a series (C-FIND below SERIES level names its
# series, as do a viewer's QIDO-RS queries): one index leads with the series and carries them
# all, so such a match reads only that index, and a store updates one index, not nine.
INSTANCE_UNINDEXED = frozenset(
    {"instance_number", "content_date", "content_time", "acquisition_date_time",
     "number_of_frames", "rows", "columns", "bits_allocated"}
)
INSTANCE_SERIES_KEYS = (
    "series_fk", "instance_number", "content_date", "content_time", "acquisition_date_time",
    "acquisition_date_time_utc", "number_of_frames", "rows", "columns", "bits_allocated",
)

instance = Table(
    "instance",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_fk", ForeignKey("series.id", ondelete="CASCADE"), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    *_columns("instance", BY_LEVEL[Level.IMAGE], skip=_KEYS, unindexed=INSTANCE_UNINDEXED),
    Index("ix_instance_series_keys", *INSTANCE_SERIES_KEYS),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(64), nullable=False, index=True),
    Column("blob_size", BigInteger, nullable=False),
    Column("blob_sha256", String(64), nullable=False),
    Column("source_ae", String(16)),
    # indexed: the newest rows are checked at start (a crash may leave one whose blob is gone)
    Column("received_at", DateTime(timezone=True), nullable=False, default=_now, index=True),
)

finding = Table(
    "finding",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_fk", ForeignKey("study.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("code", String(40), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("message", Text, nullable=False),
    Column("sop_instance_uid", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
)
"""The open QA findings of a study (cleared when it is accepted or re-checked clean)."""

audit_event = Table(
    "audit_event",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, default=_now, index=True),
    Column("actor", String(200), nullable=False),
    Column("action", String(32), nullable=False),
    Column("study_instance_uid", String(64), index=True),
    Column("outcome", String(120), nullable=False),
    Column("detail", Text),
)
"""Append-only: who did what to which study, and how it ended (never updated or deleted)."""

route_job = Table(
    "route_job",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    Column("destination", String(16), nullable=False),
    Column("rule", String(80), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), index=True),
    Column("last_error", Text),
    Column("sent", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=_now),
    # the server running the job, and until when: it renews the lease while it sends; a job
    # whose lease ran out (its server died) is claimed again by another
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime(timezone=True)),
    # route: send a study to a peer; webhook: post change ``change_seq`` to the webhook at
    # position ``webhook`` of the configured list (storage.index.changes)
    Column("kind", String(16), nullable=False, default="route", server_default="route",
           index=True),
    Column("change_seq", BigInteger),
    Column("webhook", Integer),
)
"""Routing jobs: send one archived study to one peer (pending → running → done | failed);
and webhook deliveries of the change feed, in the same table under the same leases."""

retired_blob = Table(
    "retired_blob",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("blob_key", String(64), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    Column("retired_at", DateTime(timezone=True), nullable=False, default=_now),
)
"""Files replaced by a correction: kept (not referenced by an instance) until the purge."""

api_token = Table(
    "api_token",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("lookup_id", String(16), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("expires_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)
"""API tokens of HTTP clients: the SHA-256 of each secret, never the secret; a token names
its row by ``lookup_id`` (not secret), so checking one is a lookup by key and one comparison.
Revoked tokens are kept (``revoked_at``) so that the audit trail's names stay meaningful."""

application_entities = Table(
    "application_entities",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("hosts", JSON, nullable=False),
    Column("port", Integer),
    Column("services", JSON, nullable=False),
    Column("move_destination", Boolean, nullable=False, default=False, server_default=false()),
    Column("source", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
)
"""The AE registry: the remote AEs this server knows, the addresses each may call from
(``hosts``: JSON list of IP addresses, networks or names; ``["*"]``: any), the DIMSE services
each may ask for (``services``: JSON list of store, find, move, get), and whether it is a
C-MOVE destination and routing target (at its first host and ``port``). ``source`` says who
made the entry: ``cli`` (``pacs ae add``), ``peer-flag`` or ``modality-flag`` (``pacs serve
--peer`` / ``--modality``, rewritten at each start)."""

ui_session = Table(
    "ui_session",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("principal", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("roles", String(64), nullable=False),
    Column("token_fk", Integer, ForeignKey("api_token.id", ondelete="CASCADE"), index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)
"""Signed-in web UI sessions: the SHA-256 of the random id the browser's cookie carries (never
the id), who signed in and with which roles, the API token signed in with (its revocation
ends the session), when the session was last used and when it ends at the latest. In the
index, so every server of a site knows every session."""

ui_sign_in = Table(
    "ui_sign_in",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("state_sha256", String(64), nullable=False, unique=True),
    Column("nonce", String(64), nullable=False),
    Column("code_challenge", String(64), nullable=False),
    Column("redirect_uri", String(2000), nullable=False),
    Column("next_path", String(2000), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)
"""Sign-ins under way at the OpenID Connect identity provider (authorization-code flow with
PKCE), for a few minutes each: the SHA-256 of the ``state`` sent there (never the state), the
``nonce`` its ID token must carry, the PKCE challenge the browser's cookie must answer (the
verifier itself is in that cookie only), the redirect URI the code is bound to and the page
to go on to. In the index, so any server of a site can take the callback; each row is
deleted by the callback that uses it."""

imaging_order = Table(
    "imaging_order",
    metadata,
    Column("id", Integer, primary_key=True),
    # the patient as the RIS knows it (PID-3, PID-5, PID-7, PID-8 / the REST body's keywords)
    Column("patient_id", String(64), nullable=False),
    _pattern_index("imaging_order", "patient_id"),
    Column("issuer_of_patient_id", String(64), nullable=False, default="", server_default=""),
    Column("patient_name", String(324)),
    Column("patient_name_norm", String(324)),  # match form (storage.normalize), as patient's
    _pattern_index("imaging_order", "patient_name_norm"),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("accession_number", String(16)),
    _pattern_index("imaging_order", "accession_number"),
    Column("requested_procedure_id", String(16)),
    Column("requested_procedure_description", String(64)),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("placer_order_number", String(64)),  # ORC-2
    Column("filler_order_number", String(64)),  # ORC-3
    Column("referring_physician_name", String(324)),
    # scheduled | in progress | completed | discontinued | cancelled
    Column("status", String(16), nullable=False, index=True),
    Column("source", String(16), nullable=False),  # rest | hl7
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=_now),
)
"""Imaging orders of the RIS (``POST /api/orders``, HL7 ORM^O01 / OMI^O23): one requested
procedure each, the study it is to produce (its Study Instance UID, made here when the order
has none) and the patient it is for. Cancelled orders are kept (the audit trail names them)."""

procedure_step = Table(
    "procedure_step",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_fk", ForeignKey("imaging_order.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("step_id", String(16), nullable=False),  # ScheduledProcedureStepID
    Column("station_ae_title", String(16)),  # ScheduledStationAETitle
    _pattern_index("procedure_step", "station_ae_title"),
    Column("station_name", String(16)),
    Column("modality", String(16), index=True),
    Column("start_date", String(8), index=True),  # ScheduledProcedureStepStartDate YYYYMMDD
    Column("start_time", String(16)),  # HHMMSS[.F]
    Column("description", String(64)),
    Column("performing_physician_name", String(324)),
    # PS3.3 C.4.10 ScheduledProcedureStepStatus: SCHEDULED, ARRIVED, READY, STARTED,
    # DEPARTED, CANCELED, COMPLETED, DISCONTINUED
    Column("status", String(16), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=_now),
    UniqueConstraint("order_fk", "step_id"),
)
"""The scheduled procedure steps of an order: one line of the Modality Worklist each."""

mpps = Table(
    "mpps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    # PerformedProcedureStepStatus (PS3.3 C.4.14): IN PROGRESS | COMPLETED | DISCONTINUED
    Column("status", String(16), nullable=False, index=True),
    Column("calling_ae", String(16)),
    Column("study_instance_uid", String(64), index=True),
    Column("step_fk", ForeignKey("procedure_step.id", ondelete="SET NULL"), index=True),
    # PerformedProcedureStepStart/End Date + Time, as sent (YYYYMMDDHHMMSS[.F])
    Column("started", String(32)),
    Column("ended", String(32)),
    Column("attributes", Text, nullable=False),  # the SOP instance, DICOM JSON (PS3.18 F.2)
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=_now),
    # when the stability logic last found a referenced instance missing (NULL: never)
    Column("incomplete_checked_at", DateTime(timezone=True)),
)
"""Modality Performed Procedure Steps (PS3.4 F.7): created IN PROGRESS by N-CREATE, made
COMPLETED or DISCONTINUED (final) by N-SET; linked to the scheduled step they perform (NULL
when unscheduled or the order is gone) and to their study."""

mpps_instance = Table(
    "mpps_instance",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mpps_fk", ForeignKey("mpps.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
)
"""The instances a final MPPS says it produced (PerformedSeriesSequence > Referenced Image /
Non-Image Composite SOP Instance Sequence, PS3.3 C.4.17)."""

storage_commitment = Table(
    "storage_commitment",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("transaction_uid", String(64), nullable=False, index=True),
    Column("calling_ae", String(16), nullable=False),
    Column("address", String(64)),  # where the request came from (host:port), for the record
    Column("state", String(16), nullable=False, index=True),  # pending | reported | failed
    Column("requested_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("checked_at", DateTime(timezone=True)),  # the items' outcome is known from then
    Column("reported_at", DateTime(timezone=True)),
    Column("reported_via", String(16)),  # same-association | new-association
    Column("succeeded", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), index=True),
    Column("last_error", Text),
    # the server sending the report, and until when (as route_job's)
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime(timezone=True)),
)
"""Storage Commitment Push Model requests (PS3.4 J.3): one N-ACTION each, reported by
N-EVENT-REPORT on its association or on a new one to the requestor's registered address."""

commitment_item = Table(
    "commitment_item",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("commitment_fk", ForeignKey("storage_commitment.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), index=True),  # of the stored instance, if any
    # Failure Reason (PS3.3 C.14.1.1): NULL = committed (once the request is checked)
    Column("failure_reason", Integer),
)
"""The references of a storage commitment request, each with its outcome."""
change_event = Table(
    "change_event",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # NULL until the sequencer numbers the committed row: 1, 2, 3, ... without gaps
    Column("seq", BigInteger, unique=True),
    Column("at", DateTime(timezone=True), nullable=False, default=_now, index=True),
    Column("event", String(16), nullable=False),
    # not indexed: nothing looks changes up by study, and each stored instance writes a row
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64)),
    Column("sop_instance_uid", String(64), index=True),
)
"""The change feed (``GET /api/changes``): one row per change of the archive, written in the
transaction of the change, numbered by ``seq`` once committed (storage.index.changes)."""
# the rows the sequencer has still to number: few at any time, found without a scan
Index("ix_change_event_unsequenced", change_event.c.id,
      sqlite_where=change_event.c.seq.is_(None), postgresql_where=change_event.c.seq.is_(None))

TABLES: dict[Level, Table] = {
    Level.PATIENT: patient,
    Level.STUDY: study,
    Level.SERIES: series,
    Level.IMAGE: instance,
}
