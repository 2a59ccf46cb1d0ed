"""The workflow service: what front ends call to read studies under review and act on them;
its parts (review actions, stability, purge) live in their own modules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pacs.services.errors import NotFound
from pacs.services.workflow.purge import Purge
from pacs.services.workflow.review import ReviewActions
from pacs.services.workflow.stability import Stability
from pacs.services.workflow.states import StudyState
from storage.index.audit import AuditRecord
from storage.index.commitment import CommittedInstance
from storage.index.findings import FindingRecord
from storage.index.jobs import JobRecord
from storage.index.mpps import MppsSummary
from storage.index.studies import StudyRecord


@dataclass(frozen=True)
class StudyReview:
    """A study with its open findings (and, for the study page, its history, its routing
    jobs, its MPPS and the storage commitments of its instances)."""

    study: StudyRecord
    findings: list[FindingRecord]
    history: list[AuditRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    mpps: list[MppsSummary] = field(default_factory=list)
    commitments: list[CommittedInstance] = field(default_factory=list)


class WorkflowService(ReviewActions, Stability, Purge):
    """Review actions, stability, routing jobs and purge. Thread-safe."""

    # -- reading ---------------------------------------------------------------------------
    def queue(self, limit: int = 200) -> list[StudyReview]:
        """Quarantined studies, newest first, with their findings (the QA queue)."""
        return self.studies(states=[StudyState.QUARANTINED], limit=limit)

    def studies(self, *, states: list[StudyState] | None = None, **filters: Any
                ) -> list[StudyReview]:
        with self._unit_of_work() as repository:
            studies = repository.studies.studies(
                states=None if states is None else [s.value for s in states], **filters)
            findings = repository.findings.of_studies([s.study_instance_uid for s in studies])
        return [StudyReview(s, findings.get(s.study_instance_uid, [])) for s in studies]

    def study(self, study_instance_uid: str) -> StudyReview:
        with self._unit_of_work() as repository:
            found = repository.studies.study(study_instance_uid)
            if found is None:
                raise NotFound(f"no study {study_instance_uid}")
            return StudyReview(
                found, repository.findings.of_study(study_instance_uid),
                repository.audit.events(study_instance_uid=study_instance_uid),
                repository.jobs.list(study_instance_uid=study_instance_uid),
                repository.mpps.of_study(study_instance_uid),
                repository.commitments.of_study(study_instance_uid),
            )

    def audit_events(self, *, study_instance_uid: str | None = None,
                     action: str | None = None, limit: int = 500) -> list[AuditRecord]:
        with self._unit_of_work() as repository:
            return repository.audit.events(
                study_instance_uid=study_instance_uid, action=action, limit=limit)

    def record(self, *, who: str, action: str, outcome: str,
               study_instance_uid: str | None = None, detail: dict[str, Any] | None = None
               ) -> None:
        """Append an audit event of a front end (a retrieval, say)."""
        with self._unit_of_work(write=True) as repository:
            repository.audit.append(actor=who, action=action, outcome=outcome,
                                    study_instance_uid=study_instance_uid, detail=detail)

    # -- review actions (pacs.services.workflow.review) -------------------------------------
    def accept(self, study_instance_uid: str, who: str) -> StudyReview:
        self._accept(study_instance_uid, who)
        return self.study(study_instance_uid)

    def reject(self, study_instance_uid: str, reason: str, who: str) -> StudyReview:
        self._reject(study_instance_uid, reason, who)
        return self.study(study_instance_uid)

    def reject_series(self, study_instance_uid: str, series_instance_uid: str, reason: str,
                      who: str) -> StudyReview:
        """Hide one series from every read path (a viewer's IOCM-style rejection); a study
        left with no visible series is rejected as a whole."""
        self._reject_series(study_instance_uid, series_instance_uid, reason, who)
        return self.study(study_instance_uid)

    def correct(self, study_instance_uid: str, changes: Mapping[str, str | None], who: str
                ) -> StudyReview:
        """Correct patient/study attributes in the index and in every stored file (rewritten
        as new files; the originals are kept until the purge), then re-check the study."""
        self._correct(study_instance_uid, changes, who)
        return self.study(study_instance_uid)

    def merge(self, study_instance_uid: str, patient_id: str, who: str,
              issuer_of_patient_id: str | None = None) -> StudyReview:
        """File the study under another (existing) patient: a correction of the patient
        attributes to that patient's."""
        return self.correct(study_instance_uid,
                            self._merge_changes(patient_id, issuer_of_patient_id), who)

    def correct_from_order(self, study_instance_uid: str, who: str) -> StudyReview:
        """Correct the study's patient attributes to those of its order in the worklist (the
        one action the ``order-mismatch`` finding offers)."""
        return self.correct(study_instance_uid, self._order_changes(study_instance_uid), who)

    # -- stability (pacs.services.workflow.stability), purge (.purge) ----------------------
    def resume(self, *, only_server: bool) -> int:
        """At start of the ``only_server`` of its index (SQLite): the leases its last run left
        on studies are given up, so their work is taken up at once. Among several servers
        (PostgreSQL) they stay: a live server's are its own, and one that ran out is
        claimable already."""
        if not only_server:
            return 0
        with self._unit_of_work(write=True) as repository:
            return repository.studies.release_studies()
