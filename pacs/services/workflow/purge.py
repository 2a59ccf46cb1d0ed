"""The purge: rejected studies older than the retention period are deleted, files first, one
claimed study at a time."""

from __future__ import annotations

import datetime as dt

from pacs.services.errors import NotFound
from pacs.services.lease import Renewal
from pacs.services.workflow.base import WorkflowBase, log, log_takeover
from pacs.services.workflow.states import Action, StudyState
from pacs.services.workflow.transitions import locked_state, transition
from storage.blob_store import BlobStoreUnavailable


class Purge(WorkflowBase):
    """The purge of rejected studies."""

    def purge(self, now: dt.datetime | None = None, *, who: str = "pacs:purge",
              retention: dt.timedelta | None = None) -> list[str]:
        """Delete rejected studies older than the retention period (``retention``, else the
        configured one), one claimed study at a time: its files, then its rows; the purged
        studies' UIDs."""
        now = now or dt.datetime.now(dt.UTC)
        rejected_before = now - (self.retention if retention is None else retention)
        rejected = StudyState.REJECTED.value
        with self._unit_of_work() as repository:
            if not repository.studies.purgeable(rejected, rejected_before, now=now, limit=1):
                return []
        purged: list[str] = []
        tried: list[str] = []
        while True:
            with self._unit_of_work(write=True) as repository:
                claim = repository.studies.claim_purgeable(
                    rejected, rejected_before, now=now, owner=self.node, lease=self.lease,
                    skip=tried)
            if claim is None:
                return purged
            study_instance_uid = claim.study_instance_uid
            tried.append(study_instance_uid)
            log_takeover("purge", claim)
            done = False
            try:
                with self._renewal(study_instance_uid, "purge") as renewal:
                    done = self._purge(study_instance_uid, who, renewal)
                if done:
                    purged.append(study_instance_uid)
            finally:
                if not done:  # a purged study's lease went with its row
                    self._release(study_instance_uid)

    def _purge(self, study_instance_uid: str, who: str, renewal: Renewal) -> bool:
        """Files first, under the lease: a server that dies midway leaves the rows, and
        whoever claims the study next deletes what is left (deleting a missing file is no
        error). A rejected study is on no read path, so its rows outliving some of its files
        for that time shows nothing missing. Then the rows, while the lease is still ours."""
        with self._unit_of_work() as repository:
            keys = repository.studies.study_blob_keys(study_instance_uid)
            shared = repository.studies.blobs_used_elsewhere(keys, study_instance_uid)
        deleted = set(shared)
        for key in keys:
            if renewal.lost.is_set():
                return False  # another server purges it now
            if key in deleted:
                continue
            try:
                self.blobs.delete(key)
            except BlobStoreUnavailable as error:  # the rows stay: a later round goes on
                log.warning("purge of %s left for a later round: %s", study_instance_uid, error)
                return False
            deleted.add(key)
        with self._unit_of_work(write=True) as repository:
            try:
                state = locked_state(repository, study_instance_uid, owner=self.node)
            except NotFound:
                log.warning("purge of %s: its lease ran out and another server took it",
                            study_instance_uid)
                return False
            if state is not StudyState.REJECTED:
                return False
            keys = repository.studies.study_blob_keys(study_instance_uid)
            transition(repository, study_instance_uid, Action.PURGE, who=who, current=state,
                       detail={"files": len(keys), "node": self.node})
        for key in keys:  # an instance stored for the study while its files were deleted
            if key in deleted:
                continue
            with self._unit_of_work() as repository:
                in_use = repository.studies.blob_in_use(key)
            if not in_use:
                try:
                    self.blobs.delete(key)
                except BlobStoreUnavailable as error:  # its row is gone: an orphan now
                    log.warning("blob %s left for the orphan sweep: %s", key, error)
        return True
