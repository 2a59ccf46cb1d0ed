"""Index records of studies as the workflow sees them: their states, the leases under which
servers sharing the index claim a study's background work (its stability check, its purge),
stability, corrections and the purge of a study's rows. SQL only: which states exist, which
moves are legal and who may see what are the workflow's (``pacs.services.workflow``); the
states are plain strings here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from storage.index.models import (
    instance,
    patient,
    retired_blob,
    series,
    study,
    utc_now,
)
from storage.index.mpps import performed_and_arrived
from storage.normalize import normalize_text

_now = utc_now


@dataclass(frozen=True)
class StudyRecord:
    """A study as the workflow sees it (any state)."""

    study_instance_uid: str
    state: str  # pacs.services.workflow.StudyState
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



class StudyRecords:
    """Studies of any state on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def study(self, study_instance_uid: str) -> StudyRecord | None:
        rows = self._studies(study.c.study_instance_uid == study_instance_uid, limit=1)
        return rows[0] if rows else None

    def studies(
        self,
        *,
        states: Iterable[str] | None = None,
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
            where.append(study.c.state.in_(list(states)))
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
                state=row.state,
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

    def with_accession_numbers(self, accession_numbers: Iterable[str]
                               ) -> dict[str, tuple[str, str]]:
        """For each of these Accession Numbers, a study that has it: (its UID, its state),
        the newest when several do (one statement)."""
        wanted = [a for a in dict.fromkeys(accession_numbers) if a]
        if not wanted:
            return {}
        rows = self.connection.execute(
            select(study.c.accession_number, study.c.study_instance_uid, study.c.state)
            .where(study.c.accession_number.in_(wanted)).order_by(study.c.id))
        return {row.accession_number: (row.study_instance_uid, row.state) for row in rows}

    def states_of(self, study_uids: Iterable[str]) -> dict[str, str]:
        """The state of each of these studies the index has (one statement)."""
        wanted = list(dict.fromkeys(study_uids))
        if not wanted:
            return {}
        rows = self.connection.execute(
            select(study.c.study_instance_uid, study.c.state)
            .where(study.c.study_instance_uid.in_(wanted)))
        return {row.study_instance_uid: row.state for row in rows}

    def set_state(
        self, study_instance_uid: str, state: str, *, reason: str | None = None
    ) -> bool:
        """Write a study's state (the workflow's transition function alone calls this);
        ``reason``: why it was rejected."""
        values: dict[str, Any] = {"state": state, "state_changed_at": _now()}
        if reason is not None:
            values["rejection_reason"] = reason
        changed = self.connection.execute(
            update(study).where(study.c.study_instance_uid == study_instance_uid).values(values)
        )
        return bool(changed.rowcount)

    def reject_series(self, study_instance_uid: str, series_instance_uid: str) -> int | None:
        """Hide a series of a study; returns how many series of the study are left visible,
        None when the study has no such series."""
        study_id = self.study_id(study_instance_uid)
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
                   ) -> str | None:
        """The study's state, with its row locked for this transaction (PostgreSQL); with
        ``owner``, only while that server holds the study's lease (else None)."""
        statement = select(study.c.state).where(study.c.study_instance_uid == study_instance_uid)
        if owner is not None:
            statement = statement.where(study.c.lease_owner == owner)
        if self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update()
        state = self.connection.execute(statement).scalar()
        return str(state) if state is not None else None

    def study_id(self, study_instance_uid: str) -> int | None:
        found = self.connection.execute(
            select(study.c.id).where(study.c.study_instance_uid == study_instance_uid)
        ).scalar()
        return int(found) if found is not None else None


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
        (one stored during the check makes the study unstable still) or its completed MPPS
        has all its instances."""
        where = [study.c.study_instance_uid == study_instance_uid, study.c.stable_at.is_(None)]
        if owner is not None:
            where.append(study.c.lease_owner == owner)
        if quiet_since is not None:
            where.append(_settled(quiet_since))
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
    def purgeable(self, state: str, changed_before: datetime, *, now: datetime | None = None,
                  limit: int | None = None) -> list[str]:
        """Studies in ``state`` since before ``changed_before`` (the rejected ones the purge
        deletes); with ``now``, only those no server holds a live lease on."""
        where = [*_in_state_since(state, changed_before)]
        if now is not None:
            where.append(_lease_free(now))
        rows = self.connection.execute(
            select(study.c.study_instance_uid).where(*where).order_by(study.c.id).limit(limit)
        )
        return [row.study_instance_uid for row in rows]

    def claim_purgeable(self, state: str, changed_before: datetime, *, now: datetime,
                        owner: str, lease: timedelta, skip: Iterable[str] = ()
                        ) -> StudyClaim | None:
        """The next study to purge (in ``state`` since before ``changed_before``, no live
        lease), under ``owner``'s lease: see :meth:`_claim_study`."""
        return self._claim_study(*_in_state_since(state, changed_before), now=now, owner=owner,
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


def _settled(quiet_since: datetime) -> Any:
    """Nothing arrived since ``quiet_since``, or a COMPLETED MPPS says the modality is done
    and every instance it referenced is here (stable at once, PS3.4 F.7)."""
    return or_(_last_received() < quiet_since,
               performed_and_arrived(study.c.study_instance_uid))


def _quiet(quiet_since: datetime) -> list[Any]:
    return [study.c.stable_at.is_(None), _settled(quiet_since)]


def _in_state_since(state: str, changed_before: datetime) -> list[Any]:
    return [study.c.state == state,
            or_(study.c.state_changed_at.is_(None), study.c.state_changed_at < changed_before)]



def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(text: str) -> str:
    return f"%{_escape(text).replace('*', '%')}%"


def _prefix(text: str) -> str:
    return f"{_escape(text).replace('*', '%')}%"
