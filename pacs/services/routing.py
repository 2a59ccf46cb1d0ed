"""Routing: archived studies forwarded to workstations by C-STORE, as jobs in the index.

A job (one study to one peer) is planned by the workflow when a study is archived and stable.
The :class:`RoutingService` worker claims due jobs one at a time, sends the study through the
injected :class:`Sender` (a C-STORE SCU, ``pacs.dimse.sender``), and records the outcome:
``done``, or ``failed`` with the error and the time of the next attempt (exponential backoff,
``max_attempts`` in all). A peer that is down costs only its own jobs' retries: ingest and
other routes go on.

Several servers on one PostgreSQL share the jobs: a claim skips rows another server has locked
and puts the job under this server's lease (``node``), renewed while the study is sent. A job
whose server died keeps its lease until it runs out, then any server claims it again; a server
that lost its lease (stalled past it) does not record an outcome over the new holder's. On
SQLite, the only server of its index takes back every job left running when it starts.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pacs.services.changes import ChangeEvent, record_change
from pacs.services.errors import (
    IllegalTransition,
    NotFound,
    OutOfResources,
    PacsError,
    UnknownPeer,
)
from pacs.services.lease import Renewal
from pacs.services.retrieve import Destination, RetrievePlan, RetrieveService
from storage.attributes import Level
from storage.index import Index, IndexUnavailable, Repository
from storage.index.jobs import JobRecord
from storage.query import Condition, Query, SingleValue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendReport:
    """What a send achieved: instances acknowledged, and the first error (None: all sent)."""

    sent: int
    failed: int
    error: str | None


class Sender(Protocol):
    def __call__(self, destination: Destination, plan: RetrievePlan,
                 retrieve: RetrieveService) -> SendReport: ...


class RoutingService:
    def __init__(
        self,
        *,
        index: Index,
        retrieve: RetrieveService,
        sender: Sender | None,
        retry_base: dt.timedelta = dt.timedelta(seconds=10),
        retry_max: dt.timedelta = dt.timedelta(minutes=10),
        max_attempts: int = 10,
        node: str = "pacs",
        lease: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        self.index = index
        self.retrieve = retrieve
        self.sender = sender
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.node = node  # this server, as the holder of the jobs it runs
        self.lease = lease

    def jobs(self, study_instance_uid: str | None = None, limit: int = 200) -> list[JobRecord]:
        with self.index.unit_of_work() as repository:
            return repository.jobs.list(study_instance_uid=study_instance_uid, limit=limit)

    def retry(self, job_id: int, who: str) -> JobRecord:
        with self.index.unit_of_work(write=True) as repository:
            records = repository.jobs
            job = records.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if not records.retry(job_id):
                raise IllegalTransition(f"job {job_id} is {job.state}: only a failed or done "
                                        "job can be retried", current_state=job.state)
            repository.audit.append(actor=who, action="route", outcome="retry requested",
                                    study_instance_uid=job.study_instance_uid,
                                    detail={"job": job_id})
            again = records.get(job_id)
        assert again is not None
        return again

    def resume(self, *, only_server: bool) -> int:
        """At start: jobs a stopped server left running become due again; every running one
        when this is the ``only_server`` of its index (SQLite), else those whose lease ran
        out (another live server's jobs are its own)."""
        with self.index.unit_of_work(write=True) as repository:
            return repository.jobs.resume(every=only_server)

    def run_due(self, now: dt.datetime | None = None) -> JobRecord | None:
        """Claim and run one due job; None when nothing is due."""
        if self.sender is None:
            return None
        now = now or dt.datetime.now(dt.UTC)
        try:
            with self.index.unit_of_work() as repository:
                if not repository.jobs.due(now):
                    return None  # no write lock taken twice a second for nothing
            with self.index.unit_of_work(write=True) as repository:
                job = repository.jobs.claim(now, owner=self.node, lease=self.lease)
        except IndexUnavailable as error:
            log.error("the index is unavailable: %s", error)
            raise OutOfResources("the index is unavailable") from error
        if job is None:
            return None
        def renew(repository: Repository, until: dt.datetime) -> bool:
            return repository.jobs.renew_lease(job.id, owner=self.node, until=until)

        with Renewal(self.index, self.lease, renew, f"routing job {job.id}"):
            report = self._send(job)
        with self.index.unit_of_work(write=True) as repository:
            records = repository.jobs
            if report.error is None:
                held = records.finish(job.id, report.sent, owner=self.node)
                outcome = "sent"
                record_change(repository, ChangeEvent.ROUTED, job.study_instance_uid)
            else:
                retry = None
                if job.attempts < self.max_attempts:
                    delay = min(self.retry_base * (2 ** (job.attempts - 1)), self.retry_max)
                    retry = dt.datetime.now(dt.UTC) + delay
                held = records.fail(job.id, report.error, retry, report.sent,
                                        owner=self.node)
                outcome = "failed" if retry is None else "failed, will retry"
            if not held:
                log.warning("routing job %d: its lease ran out during the send and another "
                            "server took it; its outcome (%s) is not recorded", job.id, outcome)
                return records.get(job.id)
            repository.audit.append(
                actor=f"pacs:route:{job.destination}", action="route", outcome=outcome,
                study_instance_uid=job.study_instance_uid,
                detail={"job": job.id, "attempt": job.attempts, "sent": report.sent,
                        "error": report.error})
            return records.get(job.id)

    def _send(self, job: JobRecord) -> SendReport:
        assert self.sender is not None
        try:
            destination = self.retrieve.destination(job.destination)
            plan = self.retrieve.plan(Query(
                level=Level.STUDY,
                conditions=(Condition("StudyInstanceUID", SingleValue(job.study_instance_uid)),),
            ))
        except UnknownPeer as error:
            return SendReport(0, 0, str(error))
        except PacsError as error:
            return SendReport(0, 0, f"cannot plan the send: {error}")
        if not plan.items:
            return SendReport(0, 0, "the study is not archived (or has no instances)")
        try:
            return self.sender(destination, plan, self.retrieve)
        except Exception as error:  # a sender bug must not stop the worker
            log.exception("routing job %d", job.id)
            return SendReport(0, len(plan.items),
                              f"the send failed unexpectedly ({type(error).__name__})")


class Worker:
    """A daemon thread calling ``step`` every ``interval`` seconds until stopped."""

    def __init__(self, name: str, step: Callable[[], object], interval: float) -> None:
        self._step = step
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                busy = bool(self._step())
            except PacsError as error:
                log.warning("%s: %s", self._thread.name, error)
            except Exception:
                log.exception("%s failed; going on", self._thread.name)
            if not busy:
                self._stop.wait(self._interval)
