"""Index records of the change feed and of its webhook deliveries. SQL only; what a change
is and when it is written lives in ``pacs.services.changes``, the posting in
``pacs.services.webhooks``.

Ordered and gap-free with concurrent writers: an autoincrement id is not enough (a transaction
that commits later may hold a smaller id, so a poller that read up to 7 would miss 6 forever;
a rolled-back transaction leaves a hole). So a change is written with ``seq`` NULL, in the
transaction of the change it records, and :meth:`ChangeRecords.sequence` numbers the committed
rows ``max(seq) + 1, + 2, ...`` in id order, under one lock (PostgreSQL: a transaction-level
advisory lock; SQLite: its one writer lock), in a transaction of its own. A reader sees only
numbered rows; since each numbering commits whole and the next one starts after it (the lock),
the numbered rows are always ``1..n`` at every moment.

Webhook deliveries are rows of ``route_job`` of kind ``webhook`` (one per change and webhook),
claimed under leases like routing jobs; a study's delivery to a webhook is claimed only once
every earlier one of that study to that webhook is done (in order per study).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from storage.index.models import change_event, instance, route_job, study

WEBHOOK = "webhook"
ROUTE = "route"
_PENDING, _RUNNING, _DONE, _FAILED = "pending", "running", "done", "failed"
# one key for the whole cluster: the numbering of changes (PostgreSQL advisory locks)
_SEQUENCER_LOCK = 0x70616373_6366  # "pacscf"
_INSTANCE_EVENTS = ("stored", "replaced")


@dataclass(frozen=True)
class ChangeRecord:
    """One numbered change."""

    seq: int
    at: datetime
    event: str
    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None


@dataclass(frozen=True)
class NewChange:
    """A change to append (numbered later)."""

    event: str
    study_instance_uid: str
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class WebhookJob:
    """A claimed delivery of change ``change_seq`` to webhook number ``webhook``."""

    id: int
    change_seq: int
    webhook: int
    study_instance_uid: str
    attempts: int
    last_error: str | None
    state: str


def _now() -> datetime:
    return datetime.now(UTC)


_APPEND = insert(change_event)  # built once: one runs for every stored instance


class ChangeRecords:
    """Change feed reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # -- writing (in the change's transaction) ----------------------------------------------
    def append(self, changes: Sequence[NewChange], at: datetime | None = None) -> None:
        """Record changes, unnumbered, in one statement."""
        if not changes:
            return
        when = at or _now()
        self.connection.execute(_APPEND, [
            {"seq": None, "at": when, "event": c.event,
             "study_instance_uid": c.study_instance_uid,
             "series_instance_uid": c.series_instance_uid,
             "sop_instance_uid": c.sop_instance_uid}
            for c in changes
        ])

    # -- numbering --------------------------------------------------------------------------
    def unsequenced(self) -> bool:
        """Whether a committed change waits for its number (a read: asked before the write
        lock is taken)."""
        return self.connection.execute(
            select(change_event.c.id).where(change_event.c.seq.is_(None)).limit(1)
        ).first() is not None

    def sequence(self, limit: int = 1000) -> list[ChangeRecord]:
        """Number up to ``limit`` committed, unnumbered changes in id order, after the highest
        number; returns them. Call in a write unit of work of its own: the lock (PostgreSQL)
        is held until it commits, so the next numbering reads this one's highest number."""
        if self.connection.dialect.name == "postgresql":
            self.connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                    {"key": _SEQUENCER_LOCK})
        last = int(self.connection.execute(select(func.max(change_event.c.seq))).scalar() or 0)
        rows = list(self.connection.execute(
            select(change_event).where(change_event.c.seq.is_(None))
            .order_by(change_event.c.id).limit(limit)
        ))
        if not rows:
            return []
        numbered = [(row, last + n) for n, row in enumerate(rows, start=1)]
        self.connection.execute(
            update(change_event).where(change_event.c.id == bindparam("row_id"))
            .values(seq=bindparam("new_seq")),
            [{"row_id": row.id, "new_seq": seq} for row, seq in numbered],
        )
        return [ChangeRecord(seq, row.at, row.event, row.study_instance_uid,
                             row.series_instance_uid, row.sop_instance_uid)
                for row, seq in numbered]

    # -- reading ----------------------------------------------------------------------------
    def after(self, seq: int, limit: int) -> list[ChangeRecord]:
        """Up to ``limit`` numbered changes above ``seq``, in order."""
        rows = self.connection.execute(
            select(change_event).where(change_event.c.seq > seq)
            .order_by(change_event.c.seq).limit(limit)
        )
        return [_record(row) for row in rows]

    def get(self, seq: int) -> ChangeRecord | None:
        row = self.connection.execute(
            select(change_event).where(change_event.c.seq == seq)).first()
        return _record(row) if row is not None else None

    def last(self) -> int:
        """The highest number given; 0 when none."""
        return int(self.connection.execute(select(func.max(change_event.c.seq))).scalar() or 0)

    def latest(self) -> ChangeRecord | None:
        last = self.last()
        return self.get(last) if last else None

    def newest_of_instances(self, sop_instance_uids: Iterable[str]) -> dict[str, int]:
        """The highest number of a store or replacement of each of these instances."""
        wanted = sorted(set(sop_instance_uids))
        if not wanted:
            return {}
        rows = self.connection.execute(
            select(change_event.c.sop_instance_uid, func.max(change_event.c.seq))
            .where(change_event.c.sop_instance_uid.in_(wanted),
                   change_event.c.event.in_(_INSTANCE_EVENTS), change_event.c.seq.is_not(None))
            .group_by(change_event.c.sop_instance_uid)
        )
        return {str(uid): int(seq) for uid, seq in rows}

    def instances_present(self, sop_instance_uids: Iterable[str]) -> set[str]:
        wanted = sorted(set(sop_instance_uids))
        if not wanted:
            return set()
        return set(self.connection.execute(
            select(instance.c.sop_instance_uid)
            .where(instance.c.sop_instance_uid.in_(wanted))).scalars())

    def studies_present(self, study_instance_uids: Iterable[str]) -> set[str]:
        wanted = sorted(set(study_instance_uids))
        if not wanted:
            return set()
        return set(self.connection.execute(
            select(study.c.study_instance_uid)
            .where(study.c.study_instance_uid.in_(wanted))).scalars())

    # -- retention --------------------------------------------------------------------------
    def prune(self, before: datetime, limit: int = 5000) -> int:
        """Delete up to ``limit`` numbered changes older than ``before`` (oldest first), and
        the done webhook deliveries last touched before it; how many changes went. A change
        whose delivery is still open is kept, and so is the newest change: it holds the
        highest number, which the next one continues from (never a number given twice)."""
        open_delivery = (
            select(route_job.c.id).where(
                route_job.c.kind == WEBHOOK, route_job.c.change_seq == change_event.c.seq,
                route_job.c.state != _DONE)
            .exists()
        )
        newest = select(func.max(change_event.c.seq)).scalar_subquery()
        ids = list(self.connection.execute(
            select(change_event.c.id)
            .where(change_event.c.seq.is_not(None), change_event.c.at < before, ~open_delivery,
                   change_event.c.seq < newest)
            .order_by(change_event.c.seq).limit(limit)
        ).scalars())
        if ids:
            self.connection.execute(delete(change_event).where(change_event.c.id.in_(ids)))
        self.connection.execute(delete(route_job).where(
            route_job.c.kind == WEBHOOK, route_job.c.state == _DONE,
            route_job.c.updated_at < before))
        return len(ids)

    # -- webhook deliveries -----------------------------------------------------------------
    def add_deliveries(self, deliveries: Iterable[tuple[ChangeRecord, int]],
                       now: datetime | None = None) -> int:
        """A pending delivery job per (change, webhook number)."""
        now = now or _now()
        rows = [{"study_instance_uid": change.study_instance_uid,
                 "destination": f"webhook-{webhook}", "rule": change.event, "state": _PENDING,
                 "attempts": 0, "next_attempt_at": now, "sent": 0, "created_at": now,
                 "updated_at": now, "kind": WEBHOOK, "change_seq": change.seq,
                 "webhook": webhook}
                for change, webhook in deliveries]
        if rows:
            self.connection.execute(insert(route_job), rows)
        return len(rows)

    def delivery_due(self, now: datetime) -> bool:
        """Whether a delivery is due (a read: asked before the write lock is taken)."""
        return self.connection.execute(
            select(route_job.c.id).where(*_claimable(now)).limit(1)
        ).first() is not None

    def claim_delivery(self, now: datetime, *, owner: str, lease: timedelta
                       ) -> WebhookJob | None:
        """The next due delivery whose study has no earlier delivery to the same webhook
        still open, marked running under ``owner``'s lease. On PostgreSQL servers claiming at
        once skip each other's locked row; the earlier delivery they skipped is still open, so
        none of them claims the later one of that study."""
        statement = (
            select(route_job.c.id).where(*_claimable(now))
            .order_by(route_job.c.change_seq, route_job.c.id).limit(1)
        )
        if self.connection.dialect.name == "postgresql":
            statement = statement.with_for_update(skip_locked=True, of=route_job)
        job_id = self.connection.execute(statement).scalar()
        if job_id is None:
            return None
        self.connection.execute(
            update(route_job).where(route_job.c.id == job_id)
            .values(state=_RUNNING, attempts=route_job.c.attempts + 1, updated_at=now,
                    lease_owner=owner, lease_expires_at=now + lease))
        return self.delivery(int(job_id))

    def delivery(self, job_id: int) -> WebhookJob | None:
        row = self.connection.execute(
            select(route_job).where(route_job.c.id == job_id, route_job.c.kind == WEBHOOK)
        ).first()
        if row is None:
            return None
        return WebhookJob(row.id, int(row.change_seq), int(row.webhook), row.study_instance_uid,
                          row.attempts, row.last_error, row.state)

    def deliveries(self, *, limit: int = 200) -> list[WebhookJob]:
        rows = self.connection.execute(
            select(route_job).where(route_job.c.kind == WEBHOOK)
            .order_by(route_job.c.id.desc()).limit(limit))
        return [WebhookJob(row.id, int(row.change_seq), int(row.webhook),
                           row.study_instance_uid, row.attempts, row.last_error, row.state)
                for row in rows]

    def finish_delivery(self, job_id: int, *, owner: str) -> bool:
        """Mark a delivery done, while ``owner`` still holds it."""
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id, *_held_by(owner)).values(
                state=_DONE, sent=1, next_attempt_at=None, updated_at=_now(),
                lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)

    def fail_delivery(self, job_id: int, error: str, next_attempt_at: datetime | None, *,
                      owner: str) -> bool:
        """Record a failed attempt (``next_attempt_at`` None: given up), while ``owner``
        still holds the delivery."""
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id, *_held_by(owner)).values(
                state=_FAILED, last_error=error[:2000], next_attempt_at=next_attempt_at,
                updated_at=_now(), lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)


def _record(row: Any) -> ChangeRecord:
    return ChangeRecord(int(row.seq), row.at, row.event, row.study_instance_uid,
                        row.series_instance_uid, row.sop_instance_uid)


def _open(job: Any) -> Any:
    """A delivery not finished: pending, running, or failed with a retry planned."""
    return or_(job.c.state.in_([_PENDING, _RUNNING]),
               and_(job.c.state == _FAILED, job.c.next_attempt_at.is_not(None)))


def _claimable(now: datetime) -> list[Any]:
    """Due (:func:`_delivery_due`), and no earlier delivery of its study to its webhook is
    open: a study's changes reach a webhook in order."""
    earlier = route_job.alias("earlier")
    blocked = (
        select(earlier.c.id).where(
            earlier.c.kind == WEBHOOK, earlier.c.webhook == route_job.c.webhook,
            earlier.c.study_instance_uid == route_job.c.study_instance_uid,
            earlier.c.change_seq < route_job.c.change_seq, _open(earlier))
        .exists()
    )
    return [_delivery_due(now), ~blocked]


def _delivery_due(now: datetime) -> Any:
    """A webhook delivery to attempt now: pending or failed with its attempt due, or running
    under a lease that ran out (its server died mid-post)."""
    return and_(route_job.c.kind == WEBHOOK, or_(
        and_(route_job.c.state.in_([_PENDING, _FAILED]),
             route_job.c.next_attempt_at.is_not(None), route_job.c.next_attempt_at <= now),
        and_(route_job.c.state == _RUNNING, route_job.c.lease_expires_at.is_not(None),
             route_job.c.lease_expires_at < now),
    ))


def _held_by(owner: str) -> list[Any]:
    return [route_job.c.kind == WEBHOOK, route_job.c.state == _RUNNING,
            route_job.c.lease_owner == owner]
