"""Review actions on a study: accept, reject (a study or one of its series), correct the
patient and study attributes (in the index and in every stored file), merge into another
patient."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pacs.services.blob_errors import blob_store_errors
from pacs.services.changes import ChangeEvent, record_change
from pacs.services.errors import InvalidQuery, NotFound
from pacs.services.qa_checks import Finding, InstanceFacts, Severity, run_instance_checks
from pacs.services.rewrite import rewrite_attributes
from pacs.services.workflow.base import WorkflowBase
from pacs.services.workflow.gate import finding_rows
from pacs.services.workflow.routes import plan_routes
from pacs.services.workflow.states import Action, StudyState, next_state
from pacs.services.workflow.transitions import locked_state, transition
from pacs.services.workflow.worklist_check import correction_from, order_mismatch, order_of
from storage.attributes import BY_KEYWORD, Level, column_value, match_form
from storage.blob_store import BlobNotFound
from storage.index import Repository
from storage.index.studies import StudyRecord

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
                              "manual-review", "incomplete"})


class ReviewActions(WorkflowBase):
    """A reviewer's actions; each returns nothing, the service reads the study after."""

    def _accept(self, study_instance_uid: str, who: str) -> None:
        with self._unit_of_work(write=True) as repository:
            open_findings = [f.code for f in repository.findings.of_study(study_instance_uid)]
            transition(repository, study_instance_uid, Action.ACCEPT, who=who,
                       detail={"findings": open_findings})
            repository.findings.clear(study_instance_uid)
            study = repository.studies.study(study_instance_uid)
            if study is not None and study.stable_at is not None:
                plan_routes(repository, study, self.rules, who)

    def _reject(self, study_instance_uid: str, reason: str, who: str) -> None:
        reason = reason.strip()
        if not reason:
            raise InvalidQuery("a rejection needs a reason")
        with self._unit_of_work(write=True) as repository:
            transition(repository, study_instance_uid, Action.REJECT, who=who, reason=reason,
                       detail={"reason": reason})

    def _reject_series(self, study_instance_uid: str, series_instance_uid: str, reason: str,
                       who: str) -> None:
        """Hide one series from every read path (a viewer's IOCM-style rejection); a study
        left with no visible series is rejected as a whole."""
        with self._unit_of_work(write=True) as repository:
            current = locked_state(repository, study_instance_uid)
            next_state(current, Action.REJECT)  # the study itself must allow a rejection
            left = repository.studies.reject_series(study_instance_uid, series_instance_uid)
            if left is None:
                raise NotFound(f"no series {series_instance_uid} in study {study_instance_uid}")
            repository.audit.append(actor=who, action="reject-series", outcome="rejected",
                                    study_instance_uid=study_instance_uid,
                                    detail={"series": series_instance_uid, "reason": reason,
                                            "series_left": left})
            record_change(repository, ChangeEvent.REJECTED, study_instance_uid,
                          series_instance_uid)
            if left == 0:
                transition(repository, study_instance_uid, Action.REJECT, who=who,
                           current=current, reason=reason,
                           detail={"reason": reason, "after": "its last series was rejected"})

    def _correct(self, study_instance_uid: str, changes: Mapping[str, str | None],
                 who: str) -> None:
        """Correct patient/study attributes in the index and in every stored file (rewritten
        as new files; the originals are kept until the purge), then re-check the study."""
        changes = checked_changes(changes)
        with self._unit_of_work() as repository:
            next_state(locked_state(repository, study_instance_uid), Action.CORRECT)
            before = repository.studies.study(study_instance_uid)
            files = repository.studies.instance_files(study_instance_uid)
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
                current = locked_state(repository, study_instance_uid)
                next_state(current, Action.CORRECT)
                for sop_uid, old_key, committed in rewritten:
                    info = committed.info
                    repository.studies.replace_blob(
                        sop_uid, study_instance_uid, old_key=old_key, key=info.key,
                        size=info.size, sha256=info.sha256)
                patient_values, study_values = _column_values(changes)
                if patient_values:
                    repository.studies.refile_patient(study_instance_uid, patient_values)
                repository.studies.update_study(study_instance_uid, study_values)
                state = self._recheck(repository, study_instance_uid, current, who, changes)
                repository.audit.append(
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

    def _merge_changes(self, patient_id: str, issuer_of_patient_id: str | None
                       ) -> dict[str, str | None]:
        """The patient attributes of an archived patient, as a correction's changes."""
        with self._unit_of_work() as repository:
            target = repository.studies.studies(patient_id=patient_id.replace("*", ""),
                                                limit=50)
        match = [s for s in target if s.patient_id == patient_id and (
            issuer_of_patient_id is None or s.issuer_of_patient_id == issuer_of_patient_id)]
        if not match:
            raise NotFound(f"no patient {patient_id!r} in the archive")
        patient = match[0]
        return {"PatientID": patient.patient_id, "PatientName": patient.patient_name,
                "PatientBirthDate": patient.patient_birth_date,
                "PatientSex": patient.patient_sex}

    def _order_changes(self, study_instance_uid: str) -> dict[str, str | None]:
        """The patient attributes of the study's order (by its Study Instance UID, else its
        Accession Number), as a correction's changes."""
        with self._unit_of_work() as repository:
            study = repository.studies.study(study_instance_uid)
            if study is None:
                raise NotFound(f"no study {study_instance_uid}")
            order = order_of(repository, study_instance_uid, study.accession_number)
        if order is None:
            raise NotFound(f"no open order names study {study_instance_uid} or its accession "
                           "number")
        return correction_from(order)

    def _read(self, key: str, sop_instance_uid: str) -> bytes:
        try:
            with blob_store_errors(), self.blobs.open(key) as source:
                return source.read()
        except BlobNotFound as error:
            raise NotFound(f"stored file of {sop_instance_uid} is missing") from error

    def _recheck(self, repository: Repository, study_instance_uid: str, current: StudyState,
                 who: str, changes: Mapping[str, str | None]) -> StudyState:
        """Findings after a correction: the patient and study checks again, on the index."""
        findings = repository.findings
        kept = [f for f in findings.of_study(study_instance_uid) if f.code in _KEPT_ON_RECHECK]
        study = repository.studies.study(study_instance_uid)
        assert study is not None
        found = _study_findings(study, changes)
        order = order_of(repository, study_instance_uid, study.accession_number)
        ordered = None if order is None else order_mismatch(order, {
            "PatientID": study.patient_id, "PatientName": study.patient_name,
            "PatientBirthDate": study.patient_birth_date, "PatientSex": study.patient_sex})
        if ordered is not None:
            found.append(ordered)
        findings.clear(study_instance_uid)
        findings.add(study_instance_uid,
                     [(f.code, f.severity, f.message, f.sop_instance_uid) for f in kept])
        findings.add(study_instance_uid, finding_rows(found))
        errors = [f for f in found if f.severity is Severity.ERROR] + [
            f for f in kept if f.severity == Severity.ERROR.value]
        if errors and current is StudyState.ARCHIVED:
            new = transition(repository, study_instance_uid, Action.QUARANTINE, who=who,
                             current=current, detail={"after": "correction"})
            assert new is not None
            return new
        return current


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


def checked_changes(changes: Mapping[str, str | None]) -> dict[str, str | None]:
    """A correction's changes, each value checked as its VR requires (:class:`InvalidQuery`
    naming the first that is not)."""
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
