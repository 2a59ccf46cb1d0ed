"""Index records of Storage Commitment Push Model requests (PS3.4 J.3). SQL only; when a
request is checked, reported and retried is decided by ``pacs.services.commitment``.

A request is checked in one statement per request, in the database: each reference is looked
up in ``instance`` by SOP Instance UID (a row there means its blob is durably stored: the row
is committed only after the blob, whatever the study's QA state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from storage.index.models import commitment_item, instance, series, storage_commitment, study

PENDING = "pending"
REPORTED = "reported"
FAILED = "failed"

# Failure Reason (0008,1197), PS3.3 C.14.1.1
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


@dataclass(frozen=True)
class CommitmentRecord:
    id: int
    transaction_uid: str
    calling_ae: str
    address: str | None
    state: str
    requested_at: datetime
    checked_at: datetime | None
    reported_at: datetime | None
    reported_via: str | None
    succeeded: int
    failed: int
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class ItemRecord:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    failure_reason: int | None  # None: committed (once checked)


@dataclass(frozen=True)
class CommittedInstance:
    """A reference of a study's instance in a storage commitment request, for the study page:
    which instance, committed or why not, to whom, when."""

    sop_instance_uid: str
    failure_reason: int | None
    transaction_uid: str
    calling_ae: str
    state: str
    requested_at: datetime
    reported_at: datetime | None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _record(row: Any) -> CommitmentRecord:
    requested = _aware(row.requested_at)
    assert requested is not None
    return CommitmentRecord(
        id=row.id, transaction_uid=row.transaction_uid, calling_ae=row.calling_ae,
        address=row.address, state=row.state, requested_at=requested,
        checked_at=_aware(row.checked_at), reported_at=_aware(row.reported_at),
        reported_via=row.reported_via, succeeded=row.succeeded, failed=row.failed,
        attempts=row.attempts, next_attempt_at=_aware(row.next_attempt_at),
        last_error=row.last_error,
    )


def _lease_free(now: datetime) -> Any:
    return or_(storage_commitment.c.lease_expires_at.is_(None),
               storage_commitment.c.lease_expires_at < now)


class CommitmentRecords:
    """Storage commitment reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(self, *, transaction_uid: str, calling_ae: str, address: str | None,
            references: Sequence[tuple[str, str]], at: datetime, retry_at: datetime,
            owner: str, lease_until: datetime) -> int:
        """Record a request and its references ((SOP Class UID, SOP Instance UID) pairs),
        pending and held by ``owner`` until ``lease_until``; due for the background worker at
        ``retry_at`` should the holder not report it."""
        commitment_id = int(self.connection.execute(insert(storage_commitment).values(
            transaction_uid=transaction_uid, calling_ae=calling_ae, address=address,
            state=PENDING, requested_at=at, succeeded=0, failed=0, attempts=0,
            next_attempt_at=retry_at, lease_owner=owner, lease_expires_at=lease_until,
        ).returning(storage_commitment.c.id)).scalar_one())
        if references:
            self.connection.execute(insert(commitment_item), [
                {"commitment_fk": commitment_id, "sop_class_uid": sop_class,
                 "sop_instance_uid": sop_instance}
                for sop_class, sop_instance in references])
        return commitment_id

    def check(self, commitment_id: int, at: datetime) -> tuple[int, int]:
        """Look every reference up in the index (one UPDATE): stored with the same SOP
        Class → committed; absent → 0x0112; stored as another class → 0x0119. Returns
        (succeeded, failed)."""
        stored = instance.alias("stored")
        same_uid = stored.c.sop_instance_uid == commitment_item.c.sop_instance_uid
        stored_class = select(stored.c.sop_class_uid).where(same_uid).scalar_subquery()
        study_uid = (select(study.c.study_instance_uid)
                     .select_from(stored.join(series, series.c.id == stored.c.series_fk)
                                  .join(study, study.c.id == series.c.study_fk))
                     .where(same_uid).scalar_subquery())
        self.connection.execute(
            update(commitment_item)
            .where(commitment_item.c.commitment_fk == commitment_id)
            .values(
                study_instance_uid=study_uid,
                failure_reason=case(
                    (~select(stored.c.id).where(same_uid).exists(), NO_SUCH_OBJECT_INSTANCE),
                    (func.coalesce(stored_class, "") != commitment_item.c.sop_class_uid,
                     CLASS_INSTANCE_CONFLICT),
                    else_=None,
                ),
            ))
        counts = self.connection.execute(
            select(func.count(commitment_item.c.id),
                   func.count(commitment_item.c.failure_reason))
            .where(commitment_item.c.commitment_fk == commitment_id)).one()
        total, failed = int(counts[0]), int(counts[1])
        self.connection.execute(
            update(storage_commitment).where(storage_commitment.c.id == commitment_id)
            .values(checked_at=at, succeeded=total - failed, failed=failed))
        return total - failed, failed

    def get(self, commitment_id: int) -> CommitmentRecord | None:
        row = self.connection.execute(
            select(storage_commitment).where(storage_commitment.c.id == commitment_id)).first()
        return _record(row) if row else None

    def by_transaction(self, transaction_uid: str) -> list[CommitmentRecord]:
        rows = self.connection.execute(
            select(storage_commitment)
            .where(storage_commitment.c.transaction_uid == transaction_uid)
            .order_by(storage_commitment.c.id))
        return [_record(row) for row in rows]

    def items(self, commitment_id: int) -> list[ItemRecord]:
        rows = self.connection.execute(
            select(commitment_item).where(commitment_item.c.commitment_fk == commitment_id)
            .order_by(commitment_item.c.id))
        return [ItemRecord(row.sop_class_uid, row.sop_instance_uid, row.study_instance_uid,
                           row.failure_reason) for row in rows]

    def claim_due(self, now: datetime, *, owner: str, until: datetime) -> int | None:
        """A pending request due for an attempt whose lease is free, put under ``owner``'s
        lease until ``until`` (a conditional UPDATE: of servers claiming at once, one wins)."""
        candidates = self.connection.execute(
            select(storage_commitment.c.id)
            .where(storage_commitment.c.state == PENDING,
                   storage_commitment.c.next_attempt_at <= now, _lease_free(now))
            .order_by(storage_commitment.c.next_attempt_at, storage_commitment.c.id)
            .limit(5)).scalars().all()
        for commitment_id in candidates:
            taken = self.connection.execute(
                update(storage_commitment)
                .where(storage_commitment.c.id == commitment_id,
                       storage_commitment.c.state == PENDING, _lease_free(now))
                .values(lease_owner=owner, lease_expires_at=until))
            if taken.rowcount:
                return int(commitment_id)
        return None

    def due(self, now: datetime) -> bool:
        """Whether some pending request is due (a cheap probe before claiming)."""
        return self.connection.execute(
            select(storage_commitment.c.id)
            .where(storage_commitment.c.state == PENDING,
                   storage_commitment.c.next_attempt_at <= now).limit(1)).first() is not None

    def reported(self, commitment_id: int, *, via: str, at: datetime, owner: str) -> bool:
        """The report reached the requestor; False when ``owner`` no longer held the lease."""
        result = self.connection.execute(
            update(storage_commitment)
            .where(storage_commitment.c.id == commitment_id,
                   storage_commitment.c.lease_owner == owner)
            .values(state=REPORTED, reported_at=at, reported_via=via, last_error=None,
                    attempts=storage_commitment.c.attempts + 1, next_attempt_at=None,
                    lease_owner=None, lease_expires_at=None))
        return bool(result.rowcount)

    def attempt_failed(self, commitment_id: int, *, error: str,
                       next_attempt_at: datetime | None, owner: str) -> bool:
        """An attempt to report failed: due again at ``next_attempt_at``, or ``failed`` for
        good when it is None."""
        result = self.connection.execute(
            update(storage_commitment)
            .where(storage_commitment.c.id == commitment_id,
                   storage_commitment.c.lease_owner == owner)
            .values(state=PENDING if next_attempt_at is not None else FAILED,
                    last_error=error[:2000], attempts=storage_commitment.c.attempts + 1,
                    next_attempt_at=next_attempt_at, lease_owner=None, lease_expires_at=None))
        return bool(result.rowcount)

    def of_study(self, study_instance_uid: str, limit: int = 10_000) -> list[CommittedInstance]:
        """The study's instances named in commitment requests, newest request first."""
        rows = self.connection.execute(
            select(commitment_item.c.sop_instance_uid, commitment_item.c.failure_reason,
                   storage_commitment.c.transaction_uid, storage_commitment.c.calling_ae,
                   storage_commitment.c.state, storage_commitment.c.requested_at,
                   storage_commitment.c.reported_at)
            .join(storage_commitment,
                  storage_commitment.c.id == commitment_item.c.commitment_fk)
            .where(commitment_item.c.study_instance_uid == study_instance_uid)
            .order_by(storage_commitment.c.id.desc(), commitment_item.c.id).limit(limit))
        found = []
        for row in rows:
            requested = _aware(row.requested_at)
            assert requested is not None
            found.append(CommittedInstance(
                row.sop_instance_uid, row.failure_reason, row.transaction_uid,
                row.calling_ae, row.state, requested, _aware(row.reported_at)))
        return found
