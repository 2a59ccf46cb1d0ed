"""Storage Commitment Push Model, as the SCP (PS3.4 J.3, SOP Class 1.2.840.10008.1.20.1).

A requestor asks (N-ACTION, action type 1) whether this archive takes responsibility for a list
of instances; the answer comes later, as an N-EVENT-REPORT (J.3.3):

1. :meth:`CommitmentService.request` checks the request's shape (a Transaction UID, at most
   ``MAX_REFERENCES`` valid references) and records it, pending, under this server's lease;
   the front end answers the N-ACTION at once.
2. :meth:`CommitmentService.deliver` checks every reference against the index (in SQL): an
   instance with a row in ``instance`` is committed, whatever its study's QA state (its blob
   was durable before the row was committed); absent → Failure Reason 0x0112 (No such object
   instance), stored under another SOP Class → 0x0119 (Class-instance conflict). Event type
   1 when all succeeded, 2 otherwise.
3. The report goes on the requestor's association while it is still open (``same``, given by
   the front end: J.3.3 allows either association), else on a new association to the calling
   AE as the AE registry knows it (its first host that is an address or a name, and its port;
   never the address the request came from). An AE the registry cannot reach, or a report
   that fails, is retried by the background worker (:meth:`CommitmentService.run_due`) with
   exponential backoff, ``max_attempts`` in all, then left ``failed`` with the reason.

Errors: ``MissingAttribute`` (no Transaction UID or no references), ``InvalidValue`` (a UID
that is not one), ``OutOfResources`` (too many references).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pacs.services.ae_registry import ANY_HOST, AeRegistry
from pacs.services.errors import MissingAttribute, NotFound, OutOfResources
from pacs.services.ingest import Origin
from pacs.services.mpps import check_uid
from pacs.services.retrieve import Destination
from pacs.services.workflow import actor
from storage.index import Index, IndexUnavailable
from storage.index.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    CommitmentRecord,
    CommittedInstance,
)

__all__ = ["CLASS_INSTANCE_CONFLICT", "NO_SUCH_OBJECT_INSTANCE", "CommitmentReport",
           "CommitmentService", "CommittedInstance", "ReportSender"]

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID (J.3.2)
ALL_SUCCEEDED, SOME_FAILED = 1, 2  # N-EVENT-REPORT Event Type ID (J.3.3)
MAX_REFERENCES = 10_000
SAME_ASSOCIATION = "same-association"
NEW_ASSOCIATION = "new-association"


@dataclass(frozen=True)
class CommitmentReport:
    """The Event Information of an N-EVENT-REPORT (PS3.4 J.3.3.1)."""

    commitment_id: int
    transaction_uid: str
    calling_ae: str
    succeeded: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID)
    failed: tuple[tuple[str, str, int], ...]  # ... and the Failure Reason
    retrieve_ae_title: str | None = None

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_SUCCEEDED


class ReportSender(Protocol):
    """Sends a report on a new association (``pacs.dimse.commitment``); returns None when
    the peer took it, else why not."""

    def __call__(self, destination: Destination, report: CommitmentReport) -> str | None: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CommitmentService:
    def __init__(
        self, *, index: Index, registry: AeRegistry, sender: ReportSender | None,
        retrieve_ae_title: str | None = None, node: str = "pacs",
        lease: dt.timedelta = dt.timedelta(seconds=60),
        retry_base: dt.timedelta = dt.timedelta(seconds=10),
        retry_max: dt.timedelta = dt.timedelta(minutes=10), max_attempts: int = 5,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        """``retrieve_ae_title``: the Retrieve AE Title the reports name (this server's);
        ``node``: this server, as the holder of the requests it reports."""
        self.index = index
        self.registry = registry
        self.sender = sender
        self.retrieve_ae_title = retrieve_ae_title
        self.node = node
        self.lease = lease
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.clock = clock

    def request(self, transaction_uid: str | None, references: Sequence[tuple[str, str]], *,
                origin: Origin) -> int:
        """Record a commitment request (PS3.4 J.3.2), pending and held by this server for
        ``lease``; its id. Checked and reported by :meth:`deliver`."""
        if not transaction_uid:
            raise MissingAttribute("Transaction UID (0008,1195) is missing")
        transaction = check_uid(transaction_uid, "Transaction UID")
        if not references:
            raise MissingAttribute("Referenced SOP Sequence (0008,1199) is missing or empty")
        if len(references) > MAX_REFERENCES:
            raise OutOfResources(f"{len(references)} references: at most {MAX_REFERENCES} "
                                 "in one request")
        checked = [(check_uid(sop_class, "Referenced SOP Class UID"),
                    check_uid(sop_instance, "Referenced SOP Instance UID"))
                   for sop_class, sop_instance in references]
        now = self.clock()
        calling = (origin.ae_title or "").strip()
        with self.index.unit_of_work(write=True) as repository:
            commitment_id = repository.commitments.add(
                transaction_uid=transaction, calling_ae=calling, address=origin.address,
                references=checked, at=now, retry_at=now + self.lease, owner=self.node,
                lease_until=now + self.lease)
            repository.audit.append(
                actor=actor(origin.protocol, origin.ae_title, origin.address,
                            tls_subject=origin.tls_subject),
                action="commitment-request", outcome="pending",
                detail={"transaction_uid": transaction, "references": len(checked)})
        return commitment_id

    def deliver(self, commitment_id: int,
                same: Callable[[CommitmentReport], str | None] | None = None) -> str:
        """Check the request and report it: through ``same`` (the requestor's association,
        when it is still open; returns None once the peer took the report), else on a new
        association; a failure is left for :meth:`run_due`. Returns how it ended."""
        report = self._check(commitment_id)
        if same is not None:
            problem = same(report)
            if problem is None:
                return self._reported(report, SAME_ASSOCIATION)
            log.info("storage commitment %s: not reported on the requestor's association "
                     "(%s): on a new one", report.transaction_uid, problem)
        return self._send(report)

    def run_due(self, now: dt.datetime | None = None) -> bool:
        """Report one pending request that is due (background worker); False when none."""
        if self.sender is None:
            return False
        now = now or self.clock()
        try:
            with self.index.unit_of_work() as repository:
                if not repository.commitments.due(now):
                    return False
            with self.index.unit_of_work(write=True) as repository:
                claimed = repository.commitments.claim_due(
                    now, owner=self.node, until=now + self.lease)
        except IndexUnavailable as error:
            raise OutOfResources("the index is unavailable") from error
        if claimed is None:
            return False

        # no renewal: a report's association is bounded by timeouts well under the lease
        self._send(self._check(claimed))
        return True

    def commitment(self, commitment_id: int) -> CommitmentRecord:
        with self.index.unit_of_work() as repository:
            found = repository.commitments.get(commitment_id)
        if found is None:
            raise NotFound(f"no storage commitment request {commitment_id}")
        return found

    def by_transaction(self, transaction_uid: str) -> list[CommitmentRecord]:
        with self.index.unit_of_work() as repository:
            return repository.commitments.by_transaction(transaction_uid)

    def of_study(self, study_instance_uid: str) -> list[CommittedInstance]:
        """The study's instances named in commitment requests: committed or why not, to
        whom, when (the study page)."""
        with self.index.unit_of_work() as repository:
            return repository.commitments.of_study(study_instance_uid)

    # -- inside ------------------------------------------------------------------------------
    def _check(self, commitment_id: int) -> CommitmentReport:
        with self.index.unit_of_work(write=True) as repository:
            records = repository.commitments
            record = records.get(commitment_id)
            if record is None:
                raise NotFound(f"no storage commitment request {commitment_id}")
            records.check(commitment_id, self.clock())
            items = records.items(commitment_id)
        return CommitmentReport(
            commitment_id=commitment_id, transaction_uid=record.transaction_uid,
            calling_ae=record.calling_ae,
            succeeded=tuple((i.sop_class_uid, i.sop_instance_uid) for i in items
                            if i.failure_reason is None),
            failed=tuple((i.sop_class_uid, i.sop_instance_uid, i.failure_reason) for i in items
                         if i.failure_reason is not None),
            retrieve_ae_title=self.retrieve_ae_title)

    def _send(self, report: CommitmentReport) -> str:
        destination = self._destination(report.calling_ae)
        if isinstance(destination, str):
            problem: str | None = destination
        elif self.sender is None:
            problem = "no report sender in this process"
        else:
            problem = self.sender(destination, report)
        if problem is None:
            return self._reported(report, NEW_ASSOCIATION)
        return self._failed(report, problem)

    def _destination(self, ae_title: str) -> Destination | str:
        """Where the AE registry says ``ae_title`` listens, or why it cannot be reached."""
        record = self.registry.lookup(ae_title)
        if record is None:
            return f"calling AE {ae_title!r} is not registered: the report has no address"
        if record.port is None:
            return f"calling AE {ae_title!r} is registered without a port"
        for host in record.hosts:
            if host == ANY_HOST or "/" in host and not _single_address(host):
                continue
            return Destination(record.ae_title, host.split("/")[0], record.port)
        return (f"calling AE {ae_title!r} is registered with no single address (only "
                f"networks or *)")

    def _reported(self, report: CommitmentReport, via: str) -> str:
        now = self.clock()
        with self.index.unit_of_work(write=True) as repository:
            held = repository.commitments.reported(report.commitment_id, via=via, at=now,
                                                   owner=self.node)
            repository.audit.append(
                actor=f"dimse:{report.calling_ae}", action="commitment-report",
                outcome="reported" if held else "reported (lease lost)",
                detail={"transaction_uid": report.transaction_uid, "via": via,
                        "succeeded": len(report.succeeded), "failed": len(report.failed)})
        log.info("storage commitment %s reported to %s (%s): %d committed, %d failed",
                 report.transaction_uid, report.calling_ae, via, len(report.succeeded),
                 len(report.failed))
        return via

    def _failed(self, report: CommitmentReport, problem: str) -> str:
        with self.index.unit_of_work(write=True) as repository:
            records = repository.commitments
            record = records.get(report.commitment_id)
            attempts = (record.attempts if record is not None else 0) + 1
            later = None
            if attempts < self.max_attempts:
                later = self.clock() + min(self.retry_base * (2 ** (attempts - 1)),
                                           self.retry_max)
            records.attempt_failed(report.commitment_id, error=problem, next_attempt_at=later,
                                   owner=self.node)
            if later is None:
                repository.audit.append(
                    actor=f"dimse:{report.calling_ae}", action="commitment-report",
                    outcome="failed", detail={"transaction_uid": report.transaction_uid,
                                              "attempts": attempts, "error": problem})
        log.warning("storage commitment %s: report to %s failed (attempt %d): %s",
                    report.transaction_uid, report.calling_ae, attempts, problem)
        return "failed"


def _single_address(host: str) -> bool:
    """``10.0.0.5/32`` names one address; ``10.0.0.0/24`` does not."""
    try:
        return ipaddress.ip_network(host).num_addresses == 1
    except ValueError:
        return False
