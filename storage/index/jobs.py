"""Index records of background jobs: routing jobs (send one archived study to one peer),
claimed by one server at a time under a lease, retried with backoff. SQL only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from storage.index.models import route_job, utc_now

_now = utc_now


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



class JobState:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"



class JobRecords:
    """Jobs on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(self, study_instance_uid: str, destination: str, rule: str) -> int:
        now = _now()
        return int(self.connection.execute(insert(route_job).values(
            study_instance_uid=study_instance_uid, destination=destination, rule=rule,
            state=JobState.PENDING, attempts=0, next_attempt_at=now, sent=0,
            created_at=now, updated_at=now,
        ).returning(route_job.c.id)).scalar_one())

    def due(self, now: datetime) -> bool:
        """Whether a job is due (a read: the worker asks this before taking the write lock)."""
        return self.connection.execute(
            select(route_job.c.id).where(_due(now)).limit(1)
        ).first() is not None

    def claim(self, now: datetime, *, owner: str, lease: timedelta) -> JobRecord | None:
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
        return self.get(int(job_id))

    def renew_lease(self, job_id: int, *, owner: str, until: datetime) -> bool:
        """Extend ``owner``'s lease on a running job; False if it is no longer theirs."""
        changed = self.connection.execute(
            update(route_job)
            .where(route_job.c.id == job_id, route_job.c.state == JobState.RUNNING,
                   route_job.c.lease_owner == owner)
            .values(lease_expires_at=until))
        return bool(changed.rowcount)

    def finish(self, job_id: int, sent: int, *, owner: str | None = None) -> bool:
        """Mark a job done; with ``owner``, only while that server still holds it."""
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id, *_held_by(owner)).values(
                state=JobState.DONE, sent=sent, next_attempt_at=None, last_error=None,
                updated_at=_now(), lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)

    def fail(self, job_id: int, error: str, next_attempt_at: datetime | None,
                 sent: int, *, owner: str | None = None) -> bool:
        """Mark a job failed; with ``owner``, only while that server still holds it."""
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id, *_held_by(owner)).values(
                state=JobState.FAILED, last_error=error[:2000], next_attempt_at=next_attempt_at,
                sent=sent, updated_at=_now(), lease_owner=None, lease_expires_at=None))
        return bool(changed.rowcount)

    def retry(self, job_id: int) -> bool:
        changed = self.connection.execute(
            update(route_job).where(route_job.c.id == job_id,
                                    route_job.c.state.in_([JobState.FAILED, JobState.DONE]))
            .values(state=JobState.PENDING, next_attempt_at=_now(), updated_at=_now()))
        return bool(changed.rowcount)

    def resume(self, *, every: bool, now: datetime | None = None) -> int:
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

    def get(self, job_id: int) -> JobRecord | None:
        row = self.connection.execute(select(route_job).where(route_job.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def list(self, *, study_instance_uid: str | None = None, limit: int = 200
             ) -> list[JobRecord]:
        statement = select(route_job).order_by(route_job.c.id.desc()).limit(limit)
        statement = statement.where(route_job.c.kind == "route")  # not webhook deliveries
        if study_instance_uid:
            statement = statement.where(route_job.c.study_instance_uid == study_instance_uid)
        return [_job(row) for row in self.connection.execute(statement)]

    def open_exists(self, study_instance_uid: str, destination: str) -> bool:
        return bool(self.connection.execute(
            select(func.count()).select_from(route_job).where(and_(
                route_job.c.kind == "route",
                route_job.c.study_instance_uid == study_instance_uid,
                route_job.c.destination == destination,
                route_job.c.state.in_([JobState.PENDING, JobState.RUNNING]),
            ))).scalar_one())




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

