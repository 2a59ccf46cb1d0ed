"""What the workflow's parts share: the index and blob store, units of work in the services'
words, and the leases on a study's background work."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager

from pacs.services.decoding_limits import DecodeLimits
from pacs.services.errors import OutOfResources
from pacs.services.lease import Renewal
from pacs.services.units import unit_of_work
from pacs.services.workflow.gate import QaGate
from pacs.services.workflow.routes import RouteRule
from storage.blob_store import BlobStore
from storage.index import Index, Repository
from storage.index.studies import StudyClaim

log = logging.getLogger("pacs.services.workflow")


class WorkflowBase:
    """The configuration and plumbing of :class:`~pacs.services.workflow.WorkflowService`."""

    def __init__(
        self,
        *,
        index: Index,
        blobs: BlobStore,
        gate: QaGate,
        rules: Sequence[RouteRule] = (),
        stable_after: dt.timedelta = dt.timedelta(seconds=30),
        retention: dt.timedelta = dt.timedelta(days=30),
        limits: DecodeLimits | None = None,
        node: str = "pacs",
        lease: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.gate = gate
        self.rules = tuple(rules)
        self.stable_after = stable_after
        self.retention = retention
        self.limits = limits or DecodeLimits.unlimited()
        self.node = node  # this server, as the holder of the studies it checks or purges
        self.lease = lease

    def _unit_of_work(self, *, write: bool = False) -> AbstractContextManager[Repository]:
        return unit_of_work(self.index, write=write)

    # Each study's stability check and each study's purge is claimed by one server at a time
    # (the index skips rows other servers are claiming) and held under this server's lease,
    # renewed while the work runs: two servers never check or purge the same study at once,
    # and the work of a server that died is taken up by another once its lease ran out.

    def _renewal(self, study_instance_uid: str, work: str) -> Renewal:
        def renew(repository: Repository, until: dt.datetime) -> bool:
            return repository.studies.renew_study_lease(study_instance_uid, owner=self.node,
                                                        until=until)

        return Renewal(self.index, self.lease, renew, f"{work} of {study_instance_uid}")

    def _release(self, study_instance_uid: str) -> None:
        """Give up this server's lease on a study whose work is left for a later round (it
        runs out by itself if the index cannot be reached now)."""
        try:
            with self._unit_of_work(write=True) as repository:
                repository.studies.release_study(study_instance_uid, owner=self.node)
        except OutOfResources as error:
            log.warning("lease on %s left to run out: %s", study_instance_uid, error)


def log_takeover(work: str, claim: StudyClaim) -> None:
    if claim.taken_from is not None:
        log.info("%s of %s taken over from %s, whose lease ran out", work,
                 claim.study_instance_uid, claim.taken_from)
