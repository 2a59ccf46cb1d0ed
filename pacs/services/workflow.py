"""The QA workflow: one transition table for study states, the gate every ingest passes, and
the review actions (accept, reject, correct, merge), stability, routing jobs and purge.

States and actions (``TRANSITIONS`` is the only place that says which moves are legal)::

    received ──archive──▶ archived ──reject──▶ rejected ──purge──▶ (deleted)
        │                 ▲  │   ▲                 ▲
        └─quarantine─▶ quarantined ─accept─┘       │
                          │  └──────reject─────────┘
                          └─correct (re-checked, stays quarantined until accepted)

A study that is archived and fails a later instance's check goes to ``quarantined``. An
instance sent for a ``rejected`` study is stored and logged, but the study stays rejected (the
rejection is sticky until the purge).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array

from pacs.services.blob_errors import UNAVAILABLE, blob_store_errors
from pacs.services.changes import ChangeEvent, record_change
from pacs.services.decoding_limits import (
    VIEWING_EXTRA_PER_SAMPLE,
    DecodeLimits,
    Geometry,
    GeometryError,
    check_codestream,
)
from pacs.services.errors import (
    DecoderBusy,
    DecodeTooLarge,
    IllegalTransition,
    InvalidQuery,
    NotFound,
    OutOfResources,
)
from pacs.services.lease import Renewal
from pacs.services.qa_checks import (
    INSTANCE_CHECKS,
    MANUAL_REVIEW,
    Finding,
    InstanceCheck,
    InstanceFacts,
    Severity,
    known_modality,
    run_instance_checks,
    undecodable_pixel_data,
)
from pacs.services.rewrite import rewrite_attributes
from storage.attributes import BY_KEYWORD, Level, column_value, match_form
from storage.blob_store import BlobNotFound, BlobStore, BlobStoreUnavailable
from storage.index import (
    Index,
    IndexDataError,
    IndexUnavailable,
    InstanceRow,
    Repository,
    StudyState,
    UpsertOutcome,
    UpsertResult,
)
from storage.index.workflow import (
    AuditRecord,
    FindingRecord,
    JobRecord,
    StudyClaim,
    StudyRecord,
)

log = logging.getLogger(__name__)

# The records front ends format (they never import the index themselves).
__all__ = ["AuditRecord", "FindingRecord", "JobRecord", "StudyRecord", "StudyState",
           "WorkflowService", "QaGate", "RouteRule", "StudyReview", "actor", "next_state"]


class Action(StrEnum):
    ARCHIVE = "archive"  # every check passed (auto mode)
    QUARANTINE = "quarantine"  # a check failed, or manual mode
    ACCEPT = "accept"
    REJECT = "reject"
    CORRECT = "correct"
    PURGE = "purge"


R, Q, A, X = (StudyState.RECEIVED, StudyState.QUARANTINED, StudyState.ARCHIVED,
              StudyState.REJECTED)
TRANSITIONS: dict[tuple[StudyState, Action], StudyState | None] = {
    (R, Action.ARCHIVE): A,
    (R, Action.QUARANTINE): Q,
    (A, Action.QUARANTINE): Q,
    (Q, Action.QUARANTINE): Q,
    (Q, Action.ACCEPT): A,
    (Q, Action.REJECT): X,
    (A, Action.REJECT): X,
    (Q, Action.CORRECT): Q,
    (A, Action.CORRECT): A,
    (X, Action.PURGE): None,  # the study and its files are deleted
}


def next_state(current: StudyState, action: Action) -> StudyState | None:
    """The state ``action`` leads to; :class:`IllegalTransition` if it is not allowed."""
    key = (current, action)
    if key not in TRANSITIONS:
        raise IllegalTransition(f"cannot {action} a study that is {current}",
                                current_state=current.value)
    return TRANSITIONS[key]


@dataclass(frozen=True)
class RouteRule:
    """``MODALITY=PEER`` (or ``*=PEER``): archived studies with that modality go to PEER."""

    selector: str
    destination: str

    def matches(self, modalities: Sequence[str]) -> bool:
        return self.selector == "*" or self.selector in modalities

    def __str__(self) -> str:
        return f"{self.selector}={self.destination}"


def actor(protocol: str, ae_title: str | None = None, address: str | None = None, *,
          user: str | None = None, tls_subject: str | None = None) -> str:
    """Who did something, for the audit trail: ``dimse:MODALITY@10.0.0.5``, ``http:1.2.3.4``,
    ``http:token:ohif@10.0.0.7`` (``user``: an authenticated principal's actor), and a TLS
    client certificate's subject after a space: ``dimse:CT1@10.0.0.5 tls:CN=ct1.example``."""
    name = user or ae_title
    who = f"{protocol}:{name or ''}"
    if address:
        who += f"@{address}" if name else address
    who = who.rstrip(":")
    if tls_subject:
        who += f" tls:{tls_subject}"
    return who


class QaGate:
    """The checks of one instance, run inside its ingest transaction."""

    def __init__(self, *, manual: bool = False, modalities: Sequence[str] = (),
                 registered_store: Callable[[str], bool] | None = None) -> None:
        """``modalities``: the known modalities' AE titles (``--modality``); an AE for which
        ``registered_store`` is true (the AE registry: allowed to store) is known too."""
        self.manual = manual
        checks: list[InstanceCheck] = list(INSTANCE_CHECKS)
        if modalities:
            checks.append(known_modality(frozenset(modalities), registered_store))
        self.checks = tuple(checks)

    @property
    def initial_state(self) -> StudyState:
        """New studies are archived at once in auto mode (quarantined by the first failing
        check, in the same transaction), held for review in manual mode."""
        return StudyState.QUARANTINED if self.manual else StudyState.ARCHIVED

    def after_store(
        self, repository: Repository, row: InstanceRow, result: UpsertResult, who: str
    ) -> StudyState:
        """Check the stored instance; quarantine its study on an error; audit the store.
        Returns the study's state after this instance."""
        records = repository.workflow
        state = result.study_state
        study_uid = result.study_instance_uid
        sop_uid = str(row.values[Level.IMAGE].get("sop_instance_uid"))
        outcome = {UpsertOutcome.INSERTED: "stored", UpsertOutcome.REPLACED: "replaced",
                   UpsertOutcome.ALREADY_PRESENT: "already present"}[result.outcome]
        if state is StudyState.REJECTED:
            outcome += "; study rejected, stays rejected"
        found: list[Finding] = []
        if result.outcome is not UpsertOutcome.ALREADY_PRESENT and state is not X:
            facts = InstanceFacts(row.values, row.source_ae, result.new_study, result.patient)
            found = run_instance_checks(facts, self.checks)
            patient = [f for f in found if f.code in _PATIENT_CODES]
            if patient and state is Q and records.has_findings(study_uid, _PATIENT_CODES):
                # the study is held for its patient already: later instances say nothing new
                found = [f for f in found if f.code not in _PATIENT_CODES]
            if result.new_study and self.manual:
                found.append(MANUAL_REVIEW)
        if found:
            records.add_findings(study_uid, _finding_rows(found))
            errors = [f for f in found if f.severity is Severity.ERROR]
            if errors and state in (R, A):
                new = next_state(state, Action.QUARANTINE)
                assert new is not None
                records.set_state(study_uid, new)
                records.audit(actor=who, action="quarantine", outcome="quarantined",
                              study_instance_uid=study_uid,
                              detail={"from": state.value, "findings": [f.code for f in errors],
                                      "sop_instance_uid": sop_uid})
                record_change(repository, ChangeEvent.QUARANTINED, study_instance_uid=study_uid)
                state = new
        records.audit(actor=who, action="store", outcome=outcome, study_instance_uid=study_uid,
                      detail={"sop_instance_uid": sop_uid})
        return state


_PATIENT_CODES = frozenset({"patient-mismatch", "study-patient-mismatch"})


def _finding_rows(found: Sequence[Finding]) -> list[tuple[str, str, str, str | None]]:
    return [(f.code, f.severity.value, f.message, f.sop_instance_uid) for f in found]


@dataclass(frozen=True)
class StudyReview:
    """A study with its open findings (and, for the study page, its history and jobs)."""

    study: StudyRecord
    findings: list[FindingRecord]
    history: list[AuditRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)


CORRECTABLE: dict[str, Level] = {
    "PatientName": Level.PATIENT,
    "PatientID": Level.PATIENT,
    "PatientBirthDate": Level.PATIENT,
    "PatientSex": Level.PATIENT,
    "AccessionNumber": Level.STUDY,
    "StudyDescription": Level.STUDY,
}
# Findings a correction of patient/study attributes cannot resolve.
_KEPT_ON_RECHECK = frozenset({"pixel-data-undecodable", "unknown-modality", "invalid-uid",
                              "manual-review"})


#: Studies one stability pass claims at most (the worker runs again at once while busy).
SETTLE_BATCH = 100


class WorkflowService:
    """Review actions, stability, routing jobs and purge. Thread-safe."""

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

    @contextmanager
    def _unit_of_work(self, *, write: bool = False) -> Iterator[Repository]:
        try:
            with self.index.unit_of_work(write=write) as repository:
                yield repository
        except IndexUnavailable as error:
            log.error("the index is unavailable: %s", error)
            raise OutOfResources("the index is unavailable") from error
        except IndexDataError as error:
            log.warning("the index refused a change: %s", error)
            raise InvalidQuery("the index cannot hold a value of this change") from error

    # -- reading ---------------------------------------------------------------------------
    def queue(self, limit: int = 200) -> list[StudyReview]:
        """Quarantined studies, newest first, with their findings (the QA queue)."""
        with self._unit_of_work() as repository:
            studies = repository.workflow.studies(states=[Q], limit=limit)
            findings = repository.workflow.findings_of([s.study_instance_uid for s in studies])
        return [StudyReview(s, findings.get(s.study_instance_uid, [])) for s in studies]

    def studies(self, **filters: Any) -> list[StudyReview]:
        with self._unit_of_work() as repository:
            studies = repository.workflow.studies(**filters)
            findings = repository.workflow.findings_of([s.study_instance_uid for s in studies])
        return [StudyReview(s, findings.get(s.study_instance_uid, [])) for s in studies]

    def study(self, study_instance_uid: str) -> StudyReview:
        with self._unit_of_work() as repository:
            records = repository.workflow
            found = records.study(study_instance_uid)
            if found is None:
                raise NotFound(f"no study {study_instance_uid}")
            return StudyReview(
                found, records.findings(study_instance_uid),
                records.audit_events(study_instance_uid=study_instance_uid),
                records.jobs(study_instance_uid=study_instance_uid),
            )

    def audit_events(self, *, study_instance_uid: str | None = None,
                     action: str | None = None, limit: int = 500) -> list[AuditRecord]:
        with self._unit_of_work() as repository:
            return repository.workflow.audit_events(
                study_instance_uid=study_instance_uid, action=action, limit=limit)

    def record(self, *, who: str, action: str, outcome: str,
               study_instance_uid: str | None = None, detail: dict[str, Any] | None = None
               ) -> None:
        """Append an audit event of a front end (a retrieval, say)."""
        with self._unit_of_work(write=True) as repository:
            repository.workflow.audit(actor=who, action=action, outcome=outcome,
                                      study_instance_uid=study_instance_uid, detail=detail)

    # -- review actions --------------------------------------------------------------------
    def accept(self, study_instance_uid: str, who: str) -> StudyReview:
        with self._unit_of_work(write=True) as repository:
            records = repository.workflow
            current = self._state(repository, study_instance_uid)
            new = next_state(current, Action.ACCEPT)
            assert new is not None
            open_findings = [f.code for f in records.findings(study_instance_uid)]
            records.set_state(study_instance_uid, new)
            records.clear_findings(study_instance_uid)
            records.audit(actor=who, action="accept", outcome=new.value,
                          study_instance_uid=study_instance_uid,
                          detail={"from": current.value, "findings": open_findings})
            record_change(repository, ChangeEvent.ARCHIVED, study_instance_uid=study_instance_uid)
            study = records.study(study_instance_uid)
            if study is not None and study.stable_at is not None:
                self._plan_routes(repository, study, who)
        return self.study(study_instance_uid)

    def reject(self, study_instance_uid: str, reason: str, who: str) -> StudyReview:
        reason = reason.strip()
        if not reason:
            raise InvalidQuery("a rejection needs a reason")
        with self._unit_of_work(write=True) as repository:
            records = repository.workflow
            current = self._state(repository, study_instance_uid)
            new = next_state(current, Action.REJECT)
            assert new is not None
            records.set_state(study_instance_uid, new, reason=reason)
            records.audit(actor=who, action="reject", outcome=new.value,
                          study_instance_uid=study_instance_uid,
                          detail={"from": current.value, "reason": reason})
            record_change(repository, ChangeEvent.REJECTED, study_instance_uid=study_instance_uid)
        return self.study(study_instance_uid)

    def reject_series(self, study_instance_uid: str, series_instance_uid: str, reason: str,
                      who: str) -> StudyReview:
        """Hide one series from every read path (a viewer's IOCM-style rejection); a study
        left with no visible series is rejected as a whole."""
        with self._unit_of_work(write=True) as repository:
            records = repository.workflow
            current = self._state(repository, study_instance_uid)
            next_state(current, Action.REJECT)  # the study itself must allow a rejection
            left = records.reject_series(study_instance_uid, series_instance_uid)
            if left is None:
                raise NotFound(f"no series {series_instance_uid} in study {study_instance_uid}")
            records.audit(actor=who, action="reject-series", outcome="rejected",
                          study_instance_uid=study_instance_uid,
                          detail={"series": series_instance_uid, "reason": reason,
                                  "series_left": left})
            record_change(repository, ChangeEvent.REJECTED, study_instance_uid, series_instance_uid)
            if left == 0:
                records.set_state(study_instance_uid, X, reason=reason)
                records.audit(actor=who, action="reject", outcome=X.value,
                              study_instance_uid=study_instance_uid,
                              detail={"from": current.value, "reason": reason,
                                      "after": "its last series was rejected"})
                record_change(repository, ChangeEvent.REJECTED, study_instance_uid)
        return self.study(study_instance_uid)

    def _state(self, repository: Repository, study_instance_uid: str) -> StudyState:
        state = repository.workflow.lock_study(study_instance_uid)
        if state is None:
            raise NotFound(f"no study {study_instance_uid}")
        return state

    def correct(
        self, study_instance_uid: str, changes: Mapping[str, str | None], who: str
    ) -> StudyReview:
        """Correct patient/study attributes in the index and in every stored file (rewritten
        as new files; the originals are kept until the purge), then re-check the study."""
        changes = _checked_changes(changes)
        with self._unit_of_work() as repository:
            current = self._state(repository, study_instance_uid)
            next_state(current, Action.CORRECT)
            before = repository.workflow.study(study_instance_uid)
            files = repository.workflow.instance_files(study_instance_uid)
        assert before is not None
        rewritten: list[tuple[str, str, Any]] = []  # (sop uid, old key, committed blob)
        old: dict[str, str] = {}  # the values in the files (first file that has one)
        try:
            for file in files:
                data = self._read(file.blob_key, file.sop_instance_uid)
                new_data, had = rewrite_attributes(data, changes)
                for keyword, value in had.items():
                    if value and not old.get(keyword):
                        old[keyword] = value
                staged = self.blobs.staging.stage_bytes(new_data)
                try:
                    with blob_store_errors("write"):
                        committed = self.blobs.commit(staged)
                finally:
                    self.blobs.staging.discard(staged)
                committed.wait_durable()
                rewritten.append((file.sop_instance_uid, file.blob_key, committed))
            with self._unit_of_work(write=True) as repository:
                records = repository.workflow
                current = self._state(repository, study_instance_uid)
                next_state(current, Action.CORRECT)
                for sop_uid, old_key, committed in rewritten:
                    info = committed.info
                    records.replace_blob(sop_uid, study_instance_uid, old_key=old_key,
                                         key=info.key, size=info.size, sha256=info.sha256)
                patient_values, study_values = _column_values(changes)
                if patient_values:
                    records.refile_patient(study_instance_uid, patient_values)
                records.update_study(study_instance_uid, study_values)
                state = self._recheck(repository, study_instance_uid, current, who, changes)
                records.audit(
                    actor=who, action="correct", outcome=state.value,
                    study_instance_uid=study_instance_uid,
                    detail={"changes": {k: {"old": old.get(k, _old_value(before, k)),
                                            "new": v} for k, v in changes.items()},
                            "files_rewritten": len(rewritten)},
                )
                record_change(repository, ChangeEvent.CORRECTED, study_instance_uid)
        except BaseException:
            for _, old_key, committed in rewritten:
                if committed.created and committed.info.key != old_key:
                    self.blobs.delete(committed.info.key)
            raise
        return self.study(study_instance_uid)

    def merge(self, study_instance_uid: str, patient_id: str, who: str,
              issuer_of_patient_id: str | None = None) -> StudyReview:
        """File the study under another (existing) patient: a correction of the patient
        attributes to that patient's."""
        with self._unit_of_work() as repository:
            target = repository.workflow.studies(patient_id=patient_id.replace("*", ""),
                                                 limit=50)
        match = [s for s in target if s.patient_id == patient_id and (
            issuer_of_patient_id is None or s.issuer_of_patient_id == issuer_of_patient_id)]
        if not match:
            raise NotFound(f"no patient {patient_id!r} in the archive")
        patient = match[0]
        changes = {"PatientID": patient.patient_id, "PatientName": patient.patient_name,
                   "PatientBirthDate": patient.patient_birth_date,
                   "PatientSex": patient.patient_sex}
        return self.correct(study_instance_uid, changes, who)

    def _read(self, key: str, sop_instance_uid: str) -> bytes:
        try:
            with blob_store_errors(), self.blobs.open(key) as source:
                return source.read()
        except BlobNotFound as error:
            raise NotFound(f"stored file of {sop_instance_uid} is missing") from error

    def _recheck(self, repository: Repository, study_instance_uid: str, current: StudyState,
                 who: str, changes: Mapping[str, str | None]) -> StudyState:
        """Findings after a correction: the patient and study checks again, on the index."""
        records = repository.workflow
        kept = [f for f in records.findings(study_instance_uid) if f.code in _KEPT_ON_RECHECK]
        study = records.study(study_instance_uid)
        assert study is not None
        found = _study_findings(study, changes)
        records.clear_findings(study_instance_uid)
        records.add_findings(study_instance_uid,
                             [(f.code, f.severity, f.message, f.sop_instance_uid) for f in kept])
        records.add_findings(study_instance_uid, _finding_rows(found))
        errors = [f for f in found if f.severity is Severity.ERROR] + [
            f for f in kept if f.severity == Severity.ERROR.value]
        if errors and current is A:
            records.set_state(study_instance_uid, Q)
            records.audit(actor=who, action="quarantine", outcome=Q.value,
                          study_instance_uid=study_instance_uid,
                          detail={"from": A.value, "after": "correction"})
            record_change(repository, ChangeEvent.QUARANTINED, study_instance_uid)
            return Q
        return current

    # -- stability, routing, purge ---------------------------------------------------------
    # Each study's stability check and each study's purge is claimed by one server at a time
    # (the index skips rows other servers are claiming) and held under this server's lease,
    # renewed while the work runs: two servers never check or purge the same study at once,
    # and the work of a server that died is taken up by another once its lease ran out.

    def resume(self, *, only_server: bool) -> int:
        """At start of the ``only_server`` of its index (SQLite): the leases its last run left
        on studies are given up, so their work is taken up at once. Among several servers
        (PostgreSQL) they stay: a live server's are its own, and one that ran out is
        claimable already."""
        if not only_server:
            return 0
        with self._unit_of_work(write=True) as repository:
            return repository.workflow.release_studies()

    def settle(self, now: dt.datetime | None = None) -> list[str]:
        """Mark studies stable that received nothing for the stability period; run the study
        checks on them and plan their routing, one claimed study at a time (at most
        :data:`SETTLE_BATCH` a pass). Returns the UIDs that became stable."""
        now = now or dt.datetime.now(dt.UTC)
        quiet_since = now - self.stable_after
        with self._unit_of_work() as repository:
            if not repository.workflow.quiet_studies(quiet_since, limit=1, now=now):
                return []  # no write transaction every pass for nothing
        settled: list[str] = []
        tried: list[str] = []
        while len(tried) < SETTLE_BATCH:
            with self._unit_of_work(write=True) as repository:
                claim = repository.workflow.claim_quiet_study(
                    quiet_since, now=now, owner=self.node, lease=self.lease, skip=tried)
            if claim is None:
                break
            study_instance_uid = claim.study_instance_uid
            tried.append(study_instance_uid)
            _log_takeover("stability check", claim)
            done = False
            try:
                with self._renewal(study_instance_uid, "stability"):
                    done = self._settle(study_instance_uid, quiet_since)
                if done:
                    settled.append(study_instance_uid)
            except (OutOfResources, NotFound) as error:
                log.warning("stability of %s: %s", study_instance_uid, error)
            finally:
                if not done:  # a stable study's lease went with its marking
                    self._release(study_instance_uid)
        return settled

    def _settle(self, study_instance_uid: str, quiet_since: dt.datetime) -> bool:
        with self._unit_of_work() as repository:
            firsts = repository.workflow.first_instances_of_series(study_instance_uid)
        found = [f for f in (self._decodable(file.blob_key, file.sop_instance_uid)
                             for file in firsts if _can_decode(file.transfer_syntax_uid))
                 if f is not None]
        who = "pacs:stability"
        with self._unit_of_work(write=True) as repository:
            records = repository.workflow
            if not records.mark_stable(study_instance_uid, owner=self.node,
                                       quiet_since=quiet_since):
                # an instance arrived during the check (a later round checks it again), or
                # this server stalled past its lease and another took the study over
                return False
            state = self._state(repository, study_instance_uid)
            if found:
                records.add_findings(study_instance_uid, _finding_rows(found))
                if state in (R, A):
                    records.set_state(study_instance_uid, Q)
                    records.audit(actor=who, action="quarantine", outcome=Q.value,
                                  study_instance_uid=study_instance_uid,
                                  detail={"from": state.value,
                                          "findings": [f.code for f in found]})
                    record_change(repository, ChangeEvent.QUARANTINED, study_instance_uid)
                    state = Q
            records.audit(actor=who, action="stable", outcome=state.value,
                          study_instance_uid=study_instance_uid, detail={"node": self.node})
            study = records.study(study_instance_uid)
            if state is A and study is not None:
                self._plan_routes(repository, study, who)
        return True

    def _renewal(self, study_instance_uid: str, work: str) -> Renewal:
        def renew(repository: Repository, until: dt.datetime) -> bool:
            return repository.workflow.renew_study_lease(study_instance_uid, owner=self.node,
                                                         until=until)

        return Renewal(self.index, self.lease, renew, f"{work} of {study_instance_uid}")

    def _release(self, study_instance_uid: str) -> None:
        """Give up this server's lease on a study whose work is left for a later round (it
        runs out by itself if the index cannot be reached now)."""
        try:
            with self._unit_of_work(write=True) as repository:
                repository.workflow.release_study(study_instance_uid, owner=self.node)
        except OutOfResources as error:
            log.warning("lease on %s left to run out: %s", study_instance_uid, error)

    def _decodable(self, key: str, sop_instance_uid: str) -> Finding | None:
        """The study check on pixel data: decode the first frame of the file. A frame too
        large to view within the decoding limit (the rendering budget) is not decoded, and not
        judged; waiting too long for a decoding slot raises :class:`DecoderBusy`, so the
        study is settled at a later round."""
        try:
            with self.blobs.open(key) as source:
                ds = pydicom.dcmread(source, defer_size=1024)  # large values are not read
                if "PixelData" not in ds and "FloatPixelData" not in ds:
                    return None
                try:
                    geometry = Geometry.of(ds)
                except GeometryError as error:
                    return undecodable_pixel_data(sop_instance_uid, str(error))
                try:
                    self.limits.check(geometry, frames=1, what=f"SOP Instance {sop_instance_uid}",
                                      extra_per_sample=VIEWING_EXTRA_PER_SAMPLE)
                except DecodeTooLarge as error:
                    log.info("pixel check skipped: %s", error)
                    return None
                if ds.file_meta.TransferSyntaxUID.is_encapsulated and "PixelData" in ds:
                    first = get_frame(ds.PixelData, 0, number_of_frames=geometry.number_of_frames)
                    check_codestream(first, geometry, what=f"SOP Instance {sop_instance_uid}")
                source.seek(0)
                with self.limits.slot():
                    pixel_array(source, index=0)  # the first frame: decoding it is the check
        except BlobNotFound:
            return undecodable_pixel_data(sop_instance_uid, "the stored file is missing")
        except BlobStoreUnavailable as error:  # not the file's fault: settled at a later round
            raise OutOfResources(UNAVAILABLE) from error
        except DecoderBusy:
            raise
        except Exception as error:  # any decoder failure is the finding
            return undecodable_pixel_data(sop_instance_uid, f"{type(error).__name__}: {error}")
        return None

    def _plan_routes(self, repository: Repository, study: StudyRecord, who: str) -> None:
        records = repository.workflow
        for rule in self.rules:
            if not rule.matches(study.modalities):
                continue
            if records.open_job_exists(study.study_instance_uid, rule.destination):
                continue
            job_id = records.add_job(study.study_instance_uid, rule.destination, str(rule))
            records.audit(actor=who, action="route", outcome="planned",
                          study_instance_uid=study.study_instance_uid,
                          detail={"job": job_id, "destination": rule.destination,
                                  "rule": str(rule)})

    def purge(self, now: dt.datetime | None = None, *, who: str = "pacs:purge",
              retention: dt.timedelta | None = None) -> list[str]:
        """Delete rejected studies older than the retention period (``retention``, else the
        configured one), one claimed study at a time: its files, then its rows; the purged
        studies' UIDs."""
        now = now or dt.datetime.now(dt.UTC)
        rejected_before = now - (self.retention if retention is None else retention)
        with self._unit_of_work() as repository:
            if not repository.workflow.purgeable(rejected_before, now=now, limit=1):
                return []
        purged: list[str] = []
        tried: list[str] = []
        while True:
            with self._unit_of_work(write=True) as repository:
                claim = repository.workflow.claim_purgeable(
                    rejected_before, now=now, owner=self.node, lease=self.lease, skip=tried)
            if claim is None:
                return purged
            study_instance_uid = claim.study_instance_uid
            tried.append(study_instance_uid)
            _log_takeover("purge", claim)
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
            records = repository.workflow
            keys = records.study_blob_keys(study_instance_uid)
            shared = records.blobs_used_elsewhere(keys, study_instance_uid)
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
            records = repository.workflow
            state = records.lock_study(study_instance_uid, owner=self.node)
            if state is None:
                log.warning("purge of %s: its lease ran out and another server took it",
                            study_instance_uid)
                return False
            if next_state(state, Action.PURGE) is not None:
                return False
            keys = records.delete_study(study_instance_uid)
            records.audit(actor=who, action="delete", outcome="purged",
                          study_instance_uid=study_instance_uid,
                          detail={"files": len(keys), "node": self.node})
            record_change(repository, ChangeEvent.DELETED, study_instance_uid=study_instance_uid)
        for key in keys:  # an instance stored for the study while its files were deleted
            if key in deleted:
                continue
            with self._unit_of_work() as repository:
                in_use = repository.workflow.blob_in_use(key)
            if not in_use:
                try:
                    self.blobs.delete(key)
                except BlobStoreUnavailable as error:  # its row is gone: an orphan now
                    log.warning("blob %s left for the orphan sweep: %s", key, error)
        return True


def _log_takeover(work: str, claim: StudyClaim) -> None:
    if claim.taken_from is not None:
        log.info("%s of %s taken over from %s, whose lease ran out", work,
                 claim.study_instance_uid, claim.taken_from)


def _can_decode(transfer_syntax_uid: str) -> bool:
    """Whether this server has a decoder for the syntax (video, for one, it has not): the
    pixel check judges only what it can decode."""
    try:
        return bool(get_decoder(transfer_syntax_uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def _study_findings(study: StudyRecord, changes: Mapping[str, str | None]) -> list[Finding]:
    """Patient and study checks on what the index holds after a correction: required values,
    dates, and whether the patient the study is now filed under has the corrected values (a
    corrected PatientID may name a patient archived with another name)."""
    facts = InstanceFacts(
        values={
            Level.PATIENT: {"patient_id": study.patient_id, "patient_name": study.patient_name,
                            "patient_birth_date": study.patient_birth_date},
            Level.STUDY: {"study_instance_uid": study.study_instance_uid,
                          "study_date": study.study_date},
            Level.SERIES: {"series_instance_uid": "-", "modality": ",".join(study.modalities)},
            Level.IMAGE: {"sop_instance_uid": "-"},
        },
        calling_ae=None, new_study=False, filed=None,
    )
    found = [f for f in run_instance_checks(facts) if f.code in
             {"missing-attribute", "invalid-date"}]
    filed = {"PatientName": study.patient_name, "PatientBirthDate": study.patient_birth_date,
             "PatientSex": study.patient_sex}
    differ = [f"{keyword} {value!r} (archived: {filed[keyword]!r})"
              for keyword, value in changes.items()
              if keyword in filed and value and filed[keyword] and value != filed[keyword]]
    if differ:
        found.append(Finding(
            "patient-mismatch",
            f"PatientID {study.patient_id!r} is archived with other values: {'; '.join(differ)}",
        ))
    return found


def _checked_changes(changes: Mapping[str, str | None]) -> dict[str, str | None]:
    if not changes:
        raise InvalidQuery("nothing to correct: give at least one of "
                           + ", ".join(CORRECTABLE))
    checked: dict[str, str | None] = {}
    for keyword, value in changes.items():
        if keyword not in CORRECTABLE:
            raise InvalidQuery(f"{keyword} cannot be corrected (only {', '.join(CORRECTABLE)})")
        text = None if value is None else str(value).strip()
        if keyword == "PatientID" and not text:
            raise InvalidQuery("PatientID cannot be empty")
        if keyword == "PatientBirthDate" and text:
            try:
                dt.datetime.strptime(text, "%Y%m%d")
            except ValueError:
                raise InvalidQuery(f"PatientBirthDate {text!r} is not YYYYMMDD") from None
        if keyword == "PatientSex" and text and text not in {"M", "F", "O"}:
            raise InvalidQuery(f"PatientSex {text!r} is not M, F or O")
        limit = {"PatientName": 324, "PatientID": 64, "AccessionNumber": 16,
                 "StudyDescription": 64}.get(keyword)
        if text and limit and len(text) > limit:
            raise InvalidQuery(f"{keyword} is longer than {limit} characters")
        if text and "\\" in text:
            raise InvalidQuery(f"{keyword} must be a single value (no backslash)")
        checked[keyword] = text
    return checked


def _column_values(changes: Mapping[str, str | None]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    by_level: dict[Level, dict[str, Any]] = {Level.PATIENT: {}, Level.STUDY: {}}
    for keyword, value in changes.items():
        attribute = BY_KEYWORD[keyword]
        converted = column_value(attribute, value) if value else None
        if keyword == "PatientID":
            converted = converted or ""
        by_level[CORRECTABLE[keyword]][attribute.column] = converted
        if attribute.normalized:
            by_level[CORRECTABLE[keyword]][attribute.normalized] = match_form(attribute,
                                                                              converted)
    return by_level[Level.PATIENT], by_level[Level.STUDY]


def _old_value(study: StudyRecord, keyword: str) -> Any:
    return getattr(study, BY_KEYWORD[keyword].column, None)

