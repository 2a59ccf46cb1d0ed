"""Index records of the QA workflow: study states, findings, audit events, routing jobs,
stability and purge, and the leases under which servers sharing the index claim a study's
background work. SQL only; the rules live in ``pacs.services.workflow``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from storage.index.models import (
    StudyState,
    audit_event,
    finding,
    instance,
    patient,
    retired_blob,
    route_job,
    series,
    study,
)
from storage.normalize import normalize_text


@dataclass(frozen=True)
class StudyRecord:
    """A study as the workflow sees it (any state)."""

    study_instance_uid: str
    state: StudyState
    state_changed_at: datetime | None
    rejection_reason: str | None
    stable_at: datetime | None
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    series_count: int
    instance_count: int
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class FindingRecord:
    code: str
    severity: str
    message: str
    sop_instance_uid: str | None
    created_at: datetime


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    study_instance_uid: str | None
    outcome: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class JobRecord:
    id: int
    study_instance_uid: str
    destination: str
    rule: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    sent: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StudyClaim:
    """A study this server holds for background work (its stability check or its purge)
    under a lease that runs out at ``lease_expires_at`` unless renewed."""

    study_instance_uid: str
    lease_expires_at: datetime
    taken_from: str | None = None  # the server whose lease had run out (it died, or stalled)


@dataclass(frozen=True)
class InstanceFile:
    sop_instance_uid: str
    series_instance_uid: str
    blob_key: str
    transfer_syntax_uid: str


class JobState:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def _now() -> datetime:
    return datetime.now(UTC)


class WorkflowRecords:
    """QA workflow reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # -- studies ---------------------------------------------------------------------------
    def study(self, study_instance_uid: str) -> StudyRecord | None:
        rows = self._studies(study.c.study_instance_uid == study_instance_uid, limit=1)
        return rows[0] if rows else None

    def studies(
        self,
        *,
        states: Iterable[StudyState] | None = None,
        patient_name: str | None = None,
        patient_id: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        modality: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StudyRecord]:
        """Studies in any state for the review pages; names match as a case- and
        accent-insensitive substring, IDs as a prefix."""
        where: list[Any] = []
        if states is not None:
            where.append(study.c.state.in_([s.value for s in states]))
        if patient_name:
            pattern = _contains(normalize_text(patient_name))
            where.append(patient.c.patient_name_norm.like(pattern, escape="\\"))
        if patient_id:
            where.append(patient.c.patient_id.like(_prefix(patient_id), escape="\\"))
        if date_from:
            where.append(study.c.study_date >= date_from)
        if date_to:
            where.append(study.c.study_date <= date_to)
        if modality:
            where.append(
                select(series.c.id).where(series.c.study_fk == study.c.id,
                                          series.c.modality == modality).exists()
            )
        return self._studies(*where, limit=limit, offset=offset)

    def _studies(self, *where: Any, limit: int, offset: int = 0) -> list[StudyRecord]:
        series_count = (select(func.count()).select_from(series)
                        .where(series.c.study_fk == study.c.id).scalar_subquery())
        instance_count = (
            select(func.count()).select_from(instance.join(series,
                                                           instance.c.series_fk == series.c.id))
            .where(series.c.study_fk == study.c.id).scalar_subquery()
        )
        statement = (
            select(study, patient.c.patient_id, patient.c.issuer_of_patient_id,
                   patient.c.patient_name, patient.c.patient_birth_date, patient.c.patient_sex,
                   series_count.label("series_count"), instance_count.label("instance_count"))
            .join(patient, study.c.patient_fk == patient.c.id)
            .where(*where)
            .order_by(study.c.id.desc())
            .limit(limit)
            .offset(offset or None)
        )
        rows = list(self.connection.execute(statement))
        modalities = self._modalities([row.id for row in rows])
        return [
            StudyRecord(
                study_instance_uid=row.study_instance_uid,
                state=StudyState(row.state),
                state_changed_at=row.state_changed_at,
                rejection_reason=row.rejection_reason,
                stable_at=row.stable_at,
                patient_id=row.patient_id,
                issuer_of_patient_id=row.issuer_of_patient_id,
                patient_name=row.patient_name,
                patient_birth_date=row.patient_birth_date,
                patient_sex=row.patient_sex,
                study_date=row.study_date,
                study_time=row.study_time,
                accession_number=row.accession_number,
                study_description=row.study_description,
                series_count=int(row.series_count),
                instance_count=int(row.instance_count),
                modalities=tuple(modalities.get(row.id, ())),
            )
            for row in rows
        ]

    def _modalities(self, study_ids: list[int]) -> dict[int, list[str]]:
        if not study_ids:
            return {}
        found: dict[int, list[str]] = {}
        rows = self.connection.execute(
            select(series.c.study_fk, series.c.modality).distinct()
            .where(series.c.study_fk.in_(study_ids), series.c.modality.is_not(None))
            .order_by(series.c.modality)
        )
        for row in rows:
            found.setdefault(row.study_fk, []).append(row.modality)
        return found

    def set_state(
        self, study_instance_uid: str, state: StudyState, *, reason: str | None = None
    ) -> bool:
        values: dict[str, Any] = {"state": state.value, "state_changed_at": _now()}
        if state is StudyState.REJECTED:
            values["rejection_reason"] = reason
        changed = self.connection.execute(
            update(study).where(study.c.study_instance_uid == study_instance_uid).values(values)
        )
        return bool(changed.rowcount)

    def reject_series(self, study_instance_uid: str, series_instance_uid: str) -> int | None:
        """Hide a series of a study; returns how many series of the study are left visible,
        None when the study has no such series."""
        study_id = self._study_id(study_instance_uid)
        if study_id is None:
            return None
        changed = self.connection.execute(
            update(series).where(series.c.study_fk == study_id,
                                 series.c.series_instance_uid == series_instance_uid)
            .values(rejected=True))
        if not changed.rowcount:
            return None
        return int(self.connection.execute(
            select(func.count()).select_from(series)
            .where(series.c.study_fk == study_id, series.c.rejected.is_(False))).scalar_one())

    def lock_study(self, study_instance_uid: str, *, owner: str | None = None
                   ) -> StudyState | None:
        """The study's state, with its row locked for this transaction (PostgreSQL); with
        ``owner``, only while that server holds the study's lease (else None)."""
        statement = select(study.c.state).where(study.c.study_instance_uid == study_instance_uid)
        if owner is not None:
            statement = statement.where(study.c.lease_owner == owner)
        if self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update()
        state = self.connection.execute(statement).scalar()
        return StudyState(state) if state is not None else None

    # -- findings --------------------------------------------------------------------------
    def add_findings(
        self, study_instance_uid: str, found: Iterable[tuple[str, str, str, str | None]]
    ) -> None:
        """(code, severity, message, SOP Instance UID) per finding."""
        rows = [{"code": code, "severity": severity, "message": message,
                 "sop_instance_uid": sop, "created_at": _now()}
                for code, severity, message, sop in found]
        if not rows:
            return
        study_id = self._study_id(study_instance_uid)
        if study_id is None:
            return
        self.connection.execute(insert(finding), [{**row, "study_fk": study_id} for row in rows])

    def clear_findings(self, study_instance_uid: str) -> int:
        study_id = self._study_id(study_instance_uid)
        if study_id is None:
            return 0
        return int(self.connection.execute(
            delete(finding).where(finding.c.study_fk == study_id)).rowcount)

    def has_findings(self, study_instance_uid: str, codes: Iterable[str]) -> bool:
        return bool(self.connection.execute(
            select(func.count()).select_from(finding.join(study, finding.c.study_fk == study.c.id))
            .where(study.c.study_instance_uid == study_instance_uid,
                   finding.c.code.in_(list(codes)))).scalar_one())

    def findings(self, study_instance_uid: str) -> list[FindingRecord]:
        rows = self.connection.execute(
            select(finding).join(study, finding.c.study_fk == study.c.id)
            .where(study.c.study_instance_uid == study_instance_uid).order_by(finding.c.id)
        )
        return [FindingRecord(r.code, r.severity, r.message, r.sop_instance_uid, r.created_at)
                for r in rows]

    def findings_of(self, study_uids: list[str]) -> dict[str, list[FindingRecord]]:
        if not study_uids:
            return {}
        rows = self.connection.execute(
            select(finding, study.c.study_instance_uid)
            .join(study, finding.c.study_fk == study.c.id)
            .where(study.c.study_instance_uid.in_(study_uids)).order_by(finding.c.id)
        )
        found: dict[str, list[FindingRecord]] = {}
        for r in rows:
            found.setdefault(r.study_instance_uid, []).append(
                FindingRecord(r.code, r.severity, r.message, r.sop_instance_uid, r.created_at))
        return found

    def _study_id(self, study_instance_uid: str) -> int | None:
        found = self.connection.execute(
            select(study.c.id).where(study.c.study_instance_uid == study_instance_uid)
        ).scalar()
        return int(found) if found is not None else None

    # -- audit -----------------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        study_instance_uid: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.connection.execute(_AUDIT_INSERT, {
            "at": _now(), "actor": actor[:200], "action": action, "outcome": outcome[:120],
            "study_instance_uid": study_instance_uid,
            "detail": json.dumps(detail, ensure_ascii=False, default=str) if detail else None,
        })

    def audit_many(self, events: Iterable[dict[str, Any]]) -> int:
        """Append several audit events in one statement (the batched query audit); each is
        a dict of :meth:`audit`'s keyword arguments, with ``at`` when it happened."""
        rows = [{
            "at": event.get("at") or _now(), "actor": str(event["actor"])[:200],
            "action": str(event["action"])[:32], "outcome": str(event["outcome"])[:120],
            "study_instance_uid": event.get("study_instance_uid"),
            "detail": (json.dumps(event["detail"], ensure_ascii=False, default=str)
                       if event.get("detail") else None),
        } for event in events]
        if rows:
            self.connection.execute(_AUDIT_INSERT, rows)
        return len(rows)

    def audit_events(
        self, *, study_instance_uid: str | None = None, action: str | None = None,
        limit: int = 500,
    ) -> list[AuditRecord]:
        statement = select(audit_event).order_by(audit_event.c.id.desc()).limit(limit)
        if study_instance_uid:
            statement = statement.where(audit_event.c.study_instance_uid == study_instance_uid)
        if action:
            statement = statement.where(audit_event.c.action == action)
        return [
            AuditRecord(r.id, r.at, r.actor, r.action, r.study_instance_uid, r.outcome,
                        json.loads(r.detail) if r.detail else {})
            for r in self.connection.execute(statement)
        ]

    # -- leases on a study's background work ------------------------------------------------
    def _claim_study(self, *where: Any, now: datetime, owner: str, lease: timedelta,
                     skip: Iterable[str]) -> StudyClaim | None:
        """The first study matching ``where`` whose lease is free (none, or run out), put
        under ``owner``'s lease until ``now + lease``. On PostgreSQL the candidate row is
        locked ``FOR NO KEY UPDATE SKIP LOCKED``: servers claiming at once skip each other's
        row (and an instance stored meanwhile, which only key-shares the row, is not held
        up). ``skip``: studies this pass has had already."""
        statement = (select(study.c.id, study.c.study_instance_uid, study.c.lease_owner)
                     .where(*where, _lease_free(now)).order_by(study.c.id).limit(1))
        skipped = list(skip)
        if skipped:
            statement = statement.where(study.c.study_instance_uid.not_in(skipped))
        if self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update(skip_locked=True, key_share=True, of=study)
        row = self.connection.execute(statement).first()
        if row is None:
            return None
        until = now + lease
        self.connection.execute(update(study).where(study.c.id == row.id)
                                .values(lease_owner=owner, lease_expires_at=until))
        return StudyClaim(row.study_instance_uid, until, taken_from=row.lease_owner)

    def renew_study_lease(self, study_instance_uid: str, *, owner: str, until: datetime
                          ) -> bool:
        """Extend ``owner``'s lease on a study; False if it is no longer theirs."""
        changed = self.connection.execute(
            update(study).where(study.c.study_instance_uid == study_instance_uid,
                                study.c.lease_owner == owner)
            .values(lease_expires_at=until))
        return bool(changed.rowcount)

    def release_study(self, study_instance_uid: str, *, owner: str) -> bool:
        """Give up ``owner``'s lease on a study (its work is left for a later round)."""
        changed = self.connection.execute(
            update(study).where(study.c.study_instance_uid == study_instance_uid,
                                study.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)

    def release_studies(self) -> int:
        """Give up every lease on studies (the only server of this index is starting)."""
        changed = self.connection.execute(
            update(study).where(study.c.lease_owner.is_not(None))
            .values(lease_owner=None, lease_expires_at=None))
        return int(changed.rowcount)

    def study_lease(self, study_instance_uid: str) -> tuple[str | None, datetime | None]:
        """Who holds the study's lease, and until when ((None, None): nobody)."""
        row = self.connection.execute(
            select(study.c.lease_owner, study.c.lease_expires_at)
            .where(study.c.study_instance_uid == study_instance_uid)).first()
        return (row.lease_owner, row.lease_expires_at) if row is not None else (None, None)

    # -- stability -------------------------------------------------------------------------
    def quiet_studies(self, quiet_since: datetime, limit: int = 100, *,
                      now: datetime | None = None) -> list[str]:
        """Unstable studies whose last instance arrived before ``quiet_since``; with ``now``,
        only those no server holds a live lease on."""
        where = [*_quiet(quiet_since)]
        if now is not None:
            where.append(_lease_free(now))
        rows = self.connection.execute(
            select(study.c.study_instance_uid).where(*where).order_by(study.c.id).limit(limit)
        )
        return [row.study_instance_uid for row in rows]

    def claim_quiet_study(self, quiet_since: datetime, *, now: datetime, owner: str,
                          lease: timedelta, skip: Iterable[str] = ()) -> StudyClaim | None:
        """The next study to check for stability (unstable, quiet since ``quiet_since``, no
        live lease), under ``owner``'s lease: see :meth:`_claim_study`."""
        return self._claim_study(*_quiet(quiet_since), now=now, owner=owner, lease=lease,
                                 skip=skip)

    def mark_stable(self, study_instance_uid: str, *, owner: str | None = None,
                    quiet_since: datetime | None = None) -> bool:
        """Mark an unstable study stable and free its lease; with ``owner``, only while that
        server holds the lease; with ``quiet_since``, only if no instance arrived since then
        (one stored during the check makes the study unstable still)."""
        where = [study.c.study_instance_uid == study_instance_uid, study.c.stable_at.is_(None)]
        if owner is not None:
            where.append(study.c.lease_owner == owner)
        if quiet_since is not None:
            where.append(_last_received() < quiet_since)
        changed = self.connection.execute(
            update(study).where(*where)
            .values(stable_at=_now(), lease_owner=None, lease_expires_at=None)
        )
        return bool(changed.rowcount)

    def first_instances_of_series(self, study_instance_uid: str) -> list[InstanceFile]:
        """The first-stored instance of each series of a study."""
        first = (
            select(func.min(instance.c.id))
            .select_from(instance.join(series, instance.c.series_fk == series.c.id)
                         .join(study, series.c.study_fk == study.c.id))
            .where(study.c.study_instance_uid == study_instance_uid)
            .group_by(series.c.id)
        )
        return self._instance_files(instance.c.id.in_(first.scalar_subquery()))

    def instance_files(self, study_instance_uid: str) -> list[InstanceFile]:
        return self._instance_files(study.c.study_instance_uid == study_instance_uid)

    def _instance_files(self, where: Any) -> list[InstanceFile]:
        rows = self.connection.execute(
            select(instance.c.sop_instance_uid, series.c.series_instance_uid, instance.c.blob_key,
                   instance.c.transfer_syntax_uid)
            .join(series, instance.c.series_fk == series.c.id)
            .join(study, series.c.study_fk == study.c.id)
            .where(where).order_by(series.c.id, instance.c.instance_number, instance.c.id)
        )
        return [InstanceFile(r.sop_instance_uid, r.series_instance_uid, r.blob_key,
                             r.transfer_syntax_uid) for r in rows]

    # -- corrections -----------------------------------------------------------------------
    def update_study(self, study_instance_uid: str, values: dict[str, Any]) -> None:
        if values:
            self.connection.execute(
                update(study).where(study.c.study_instance_uid == study_instance_uid)
                .values(values))

    def refile_patient(self, study_instance_uid: str, values: dict[str, Any]) -> None:
        """File the study under the patient with the corrected values: its own patient row is
        updated when no other study shares it, else the row of the corrected PatientID (and
        issuer) is used, created when missing."""
        row = self.connection.execute(
            select(study.c.id, study.c.patient_fk, patient.c.patient_id,
                   patient.c.issuer_of_patient_id)
            .join(patient, study.c.patient_fk == patient.c.id)
            .where(study.c.study_instance_uid == study_instance_uid)
        ).one()
        target_id = values.get("patient_id", row.patient_id) or ""
        target_issuer = values.get("issuer_of_patient_id", row.issuer_of_patient_id) or ""
        shared = self.connection.execute(
            select(func.count()).select_from(study).where(study.c.patient_fk == row.patient_fk)
        ).scalar_one() > 1
        existing = self.connection.execute(
            select(patient.c.id).where(patient.c.patient_id == target_id,
                                       patient.c.issuer_of_patient_id == target_issuer)
        ).scalar()
        if existing is not None and existing != row.patient_fk:
            # the corrected PatientID is another patient's: the study joins that patient as
            # archived (its values are not overwritten; the re-check compares them)
            self.connection.execute(update(study).where(study.c.id == row.id)
                                    .values(patient_fk=existing))
            if not shared:
                self.connection.execute(delete(patient).where(patient.c.id == row.patient_fk))
        elif shared and existing is None:
            current = self.connection.execute(
                select(patient).where(patient.c.id == row.patient_fk)).one()._mapping
            fresh = {k: v for k, v in current.items() if k != "id"}
            fresh.update(values, created_at=_now())
            new_id = self.connection.execute(
                insert(patient).values(fresh).returning(patient.c.id)).scalar_one()
            self.connection.execute(update(study).where(study.c.id == row.id)
                                    .values(patient_fk=new_id))
        elif not shared:
            self.connection.execute(update(patient).where(patient.c.id == row.patient_fk)
                                    .values(values))
        # else: the same PatientID as other studies of this patient: the patient row stays as
        # archived (renaming it would rename those studies too); the re-check compares

    def replace_blob(
        self, sop_instance_uid: str, study_instance_uid: str, *, old_key: str, key: str,
        size: int, sha256: str, values: dict[str, Any] | None = None,
    ) -> None:
        """Point an instance at a rewritten file; the old one is kept until the purge."""
        self.connection.execute(
            update(instance).where(instance.c.sop_instance_uid == sop_instance_uid)
            .values(blob_key=key, blob_size=size, blob_sha256=sha256, **(values or {})))
        if old_key != key:
            self.connection.execute(insert(retired_blob).values(
                blob_key=old_key, study_instance_uid=study_instance_uid, retired_at=_now()))

    # -- purge -----------------------------------------------------------------------------
    def purgeable(self, rejected_before: datetime, *, now: datetime | None = None,
                  limit: int | None = None) -> list[str]:
        """Studies rejected before ``rejected_before``; with ``now``, only those no server
        holds a live lease on."""
        where = [*_rejected_before(rejected_before)]
        if now is not None:
            where.append(_lease_free(now))
        rows = self.connection.execute(
            select(study.c.study_instance_uid).where(*where).order_by(study.c.id).limit(limit)
        )
        return [row.study_instance_uid for row in rows]

    def claim_purgeable(self, rejected_before: datetime, *, now: datetime, owner: str,
                        lease: timedelta, skip: Iterable[str] = ()) -> StudyClaim | None:
        """The next study to purge (rejected before ``rejected_before``, no live lease), under
        ``owner``'s lease: see :meth:`_claim_study`."""
        return self._claim_study(*_rejected_before(rejected_before), now=now, owner=owner,
                                 lease=lease, skip=skip)

    def study_blob_keys(self, study_instance_uid: str) -> list[str]:
        """The blob keys of a study's files: its instances' and those corrections retired."""
        keys = [f.blob_key for f in self.instance_files(study_instance_uid)]
        keys += self.connection.execute(
            select(retired_blob.c.blob_key)
            .where(retired_blob.c.study_instance_uid == study_instance_uid)).scalars()
        return list(dict.fromkeys(keys))

    def blobs_used_elsewhere(self, keys: Iterable[str], study_instance_uid: str) -> set[str]:
        """Which of ``keys`` an instance or a retired file of another study refers to."""
        wanted = list(keys)
        if not wanted:
            return set()
        used = set(self.connection.execute(
            select(instance.c.blob_key)
            .join(series, instance.c.series_fk == series.c.id)
            .join(study, series.c.study_fk == study.c.id)
            .where(instance.c.blob_key.in_(wanted),
                   study.c.study_instance_uid != study_instance_uid)).scalars())
        used.update(self.connection.execute(
            select(retired_blob.c.blob_key)
            .where(retired_blob.c.blob_key.in_(wanted),
                   retired_blob.c.study_instance_uid != study_instance_uid)).scalars())
        return used

    def delete_study(self, study_instance_uid: str) -> list[str]:
        """Delete a study's rows (instances, series, findings, the patient if left empty);
        returns the blob keys that were its files (current and retired)."""
        keys = self.study_blob_keys(study_instance_uid)
        patient_fk = self.connection.execute(
            select(study.c.patient_fk).where(study.c.study_instance_uid == study_instance_uid)
        ).scalar()
        self.connection.execute(delete(study).where(
            study.c.study_instance_uid == study_instance_uid))
        self.connection.execute(delete(retired_blob).where(
            retired_blob.c.study_instance_uid == study_instance_uid))
        if patient_fk is not None:
            left = self.connection.execute(
                select(func.count()).select_from(study).where(study.c.patient_fk == patient_fk)
            ).scalar_one()
            if not left:
                self.connection.execute(delete(patient).where(patient.c.id == patient_fk))
        return keys

    def blob_in_use(self, key: str) -> bool:
        """Whether an instance or a retired file record still refers to this blob."""
        return bool(self.connection.execute(
            select(func.count()).select_from(instance).where(instance.c.blob_key == key)
        ).scalar_one() or self.connection.execute(
            select(func.count()).select_from(retired_blob).where(retired_blob.c.blob_key == key)
        ).scalar_one())

    def blobs_in_use(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` an instance or a retired file record refers to (the start-up
        orphan sweep asks in batches of a few hundred keys)."""
        wanted = list(keys)
        if not wanted:
            return set()
        used = set(self.connection.execute(
            select(instance.c.blob_key).where(instance.c.blob_key.in_(wanted))).scalars())
        used.update(self.connection.execute(
            select(retired_blob.c.blob_key).where(retired_blob.c.blob_key.in_(wanted))
        ).scalars())
        return used

    # -- routing jobs ----------------------------------------------------------------------
    def add_job(self, study_instance_uid: str, destination: str, rule: str) -> int:
        now = _now()
        return int(self.connection.execute(insert(route_job).values(
            study_instance_uid=study_instance_uid, destination=destination, rule=rule,
            state=JobState.PENDING, attempts=0, next_attempt_at=now, sent=0,
            created_at=now, updated_at=now,
        ).returning(route_job.c.id)).scalar_one())

    def job_due(self, now: datetime) -> bool:
        """Whether a job is due (a read: the worker asks this before taking the write lock)."""
        return self.connection.execute(
            select(route_job.c.id).where(_due(now)).limit(1)
        ).first() is not None

    def claim_job(self, now: datetime, *, owner: str, lease: timedelta) -> JobRecord | None:
        """The next due job (pending, failed with a retry due, or running under a lease that
        ran out), marked running under ``owner``'s lease. Several servers on PostgreSQL skip
        each other's locked rows, so each job goes to one of them."""
        statement = (
            select(route_job.c.id).where(_due(now))
            .order_by(route_job.c.next_attempt_at, route_job.c.id).limit(1)
        )
        if self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update(skip_locked=True)
        job_id = self.connection.execute(statement).scalar()
        if job_id is None:
            return None
        self.connection.execute(
            update(route_job).where(route_job.c.id == job_id)
            .values(state=JobState.RUNNING, attempts=route_job.c.attempts + 1, updated_at=now,
                    lease_owner=owner, lease_expires_at=now + lease))
        return self.job(int(job_id))

    def renew_lease(self, job_id: int, *, owner: str, until: datetime) -> bool:
        """Extend ``owner``'s lease on a running job; False if it is no longer theirs."""
        changed = self.connection.execute(
            update(route_job)
            .where(route_job.c.id == job_id, route_job.c.state == JobState.RUNNING,
                   route_job.c.lease_owner == owner)
            .values(lease_expires_at=until))
        return bool(changed.rowcount)

    def finish_job(self, job_id: int, sent: int, *, owner: str | None = None) -> bool:
        """Mark a job done; with ``owner``, only while that server still holds it."""
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id, *_held_by(owner)).values(
                state=JobState.DONE, sent=sent, next_attempt_at=None, last_error=None,
                updated_at=_now(), lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)

    def fail_job(self, job_id: int, error: str, next_attempt_at: datetime | None,
                 sent: int, *, owner: str | None = None) -> bool:
        """Mark a job failed; with ``owner``, only while that server still holds it."""
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id, *_held_by(owner)).values(
                state=JobState.FAILED, last_error=error[:2000], next_attempt_at=next_attempt_at,
                sent=sent, updated_at=_now(), lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)

    def retry_job(self, job_id: int) -> bool:
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id,
                                    route_job.c.state.in_([JobState.FAILED, JobState.DONE]))
            .values(state=JobState.PENDING, next_attempt_at=_now(), updated_at=_now()))
        return bool(changed.rowcount)

    def resume_jobs(self, *, every: bool, now: datetime | None = None) -> int:
        """Jobs left running by a stopped server become due again: ``every`` running job
        (the only server on this index is starting), else those without a live lease."""
        now = now or _now()
        statement = update(route_job).where(route_job.c.state == JobState.RUNNING)
        if not every:
            statement = statement.where(or_(route_job.c.lease_expires_at.is_(None),
                                            route_job.c.lease_expires_at < now))
        changed = self.connection.execute(statement.values(
            state=JobState.PENDING, next_attempt_at=now, updated_at=now, lease_owner=None,
            lease_expires_at=None))
        return int(changed.rowcount)

    def job(self, job_id: int) -> JobRecord | None:
        row = self.connection.execute(select(route_job).where(route_job.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def jobs(self, *, study_instance_uid: str | None = None, limit: int = 200
             ) -> list[JobRecord]:
        statement = select(route_job).order_by(route_job.c.id.desc()).limit(limit)
        statement = statement.where(route_job.c.kind == "route")  # not webhook deliveries
        if study_instance_uid:
            statement = statement.where(route_job.c.study_instance_uid == study_instance_uid)
        return [_job(row) for row in self.connection.execute(statement)]

    def open_job_exists(self, study_instance_uid: str, destination: str) -> bool:
        return bool(self.connection.execute(
            select(func.count()).select_from(route_job).where(and_(
                route_job.c.study_instance_uid == study_instance_uid,
                route_job.c.destination == destination,
                route_job.c.state.in_([JobState.PENDING, JobState.RUNNING]),
            ))).scalar_one())


_AUDIT_INSERT = insert(audit_event)  # built once: one runs for every stored instance


def _lease_free(now: datetime) -> Any:
    """No server holds the study's lease at ``now`` (none, or it ran out: its server died)."""
    return or_(study.c.lease_expires_at.is_(None), study.c.lease_expires_at < now)


def _last_received() -> Any:
    """When the study's newest instance arrived."""
    return (
        select(func.max(instance.c.received_at))
        .select_from(instance.join(series, instance.c.series_fk == series.c.id))
        .where(series.c.study_fk == study.c.id).scalar_subquery()
    )


def _quiet(quiet_since: datetime) -> list[Any]:
    return [study.c.stable_at.is_(None), _last_received() < quiet_since]


def _rejected_before(rejected_before: datetime) -> list[Any]:
    return [study.c.state == StudyState.REJECTED.value,
            or_(study.c.state_changed_at.is_(None), study.c.state_changed_at < rejected_before)]


def _due(now: datetime) -> Any:
    """A job to run now: pending or failed with its attempt due, or running under a lease
    that ran out (its server died mid-send)."""
    return and_(route_job.c.kind == "route", or_(  # webhook jobs: storage.index.changes
        and_(route_job.c.state.in_([JobState.PENDING, JobState.FAILED]),
             route_job.c.next_attempt_at.is_not(None), route_job.c.next_attempt_at <= now),
        and_(route_job.c.state == JobState.RUNNING, route_job.c.lease_expires_at.is_not(None),
             route_job.c.lease_expires_at < now),
    ))


def _held_by(owner: str | None) -> list[Any]:
    if owner is None:
        return []
    return [route_job.c.state == JobState.RUNNING, route_job.c.lease_owner == owner]


def _job(row: Any) -> JobRecord:
    return JobRecord(row.id, row.study_instance_uid, row.destination, row.rule, row.state,
                     row.attempts, row.next_attempt_at, row.last_error, row.sent,
                     row.created_at, row.updated_at)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(text: str) -> str:
    return f"%{_escape(text).replace('*', '%')}%"


def _prefix(text: str) -> str:
    return f"{_escape(text).replace('*', '%')}%"
