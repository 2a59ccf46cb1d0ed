"""The QA gate: the checks every stored instance passes, inside its ingest transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pacs.services.qa_checks import (
    INSTANCE_CHECKS,
    MANUAL_REVIEW,
    Finding,
    InstanceCheck,
    InstanceFacts,
    Severity,
    known_modality,
    run_instance_checks,
)
from pacs.services.workflow.states import Action, StudyState
from pacs.services.workflow.transitions import transition
from pacs.services.workflow.worklist_check import order_mismatch, order_of
from storage.attributes import Level
from storage.index import InstanceRow, Repository, UpsertOutcome, UpsertResult

#: Findings about the patient: said once per held study, not again for each instance.
PATIENT_CODES = frozenset({"patient-mismatch", "study-patient-mismatch"})


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
        state = StudyState(result.study_state)
        study_uid = result.study_instance_uid
        sop_uid = str(row.values[Level.IMAGE].get("sop_instance_uid"))
        outcome = {UpsertOutcome.INSERTED: "stored", UpsertOutcome.REPLACED: "replaced",
                   UpsertOutcome.ALREADY_PRESENT: "already present"}[result.outcome]
        if state is StudyState.REJECTED:
            outcome += "; study rejected, stays rejected"
        found: list[Finding] = []
        if result.outcome is not UpsertOutcome.ALREADY_PRESENT and state is not StudyState.REJECTED:
            facts = InstanceFacts(row.values, row.source_ae, result.new_study, result.patient)
            found = run_instance_checks(facts, self.checks)
            patient = [f for f in found if f.code in PATIENT_CODES]
            if patient and state is StudyState.QUARANTINED and repository.findings.has(
                    study_uid, PATIENT_CODES):
                # the study is held for its patient already: later instances say nothing new
                found = [f for f in found if f.code not in PATIENT_CODES]
            if result.new_study:
                ordered = _order_check(repository, row, study_uid)
                if ordered is not None:
                    found.append(ordered)
            if result.new_study and self.manual:
                found.append(MANUAL_REVIEW)
        if found:
            repository.findings.add(study_uid, finding_rows(found))
            errors = [f for f in found if f.severity is Severity.ERROR]
            if errors and state in (StudyState.RECEIVED, StudyState.ARCHIVED):
                new = transition(repository, study_uid, Action.QUARANTINE, who=who,
                                 current=state,
                                 detail={"findings": [f.code for f in errors],
                                         "sop_instance_uid": sop_uid})
                assert new is not None
                state = new
        repository.audit.append(actor=who, action="store", outcome=outcome,
                                study_instance_uid=study_uid,
                                detail={"sop_instance_uid": sop_uid})
        return state


def _order_check(repository: Repository, row: InstanceRow, study_uid: str) -> Finding | None:
    """The worklist check of a new study's first instance (``worklist_check``)."""
    order = order_of(repository, study_uid, row.values[Level.STUDY].get("accession_number"))
    if order is None:
        return None
    patient = row.values[Level.PATIENT]
    return order_mismatch(order, {
        "PatientID": patient.get("patient_id"), "PatientName": patient.get("patient_name"),
        "PatientBirthDate": patient.get("patient_birth_date"),
        "PatientSex": patient.get("patient_sex")})


def finding_rows(found: Sequence[Finding]) -> list[tuple[str, str, str, str | None]]:
    """Findings as the index records them: (code, severity, message, SOP Instance UID)."""
    return [(f.code, f.severity.value, f.message, f.sop_instance_uid) for f in found]
