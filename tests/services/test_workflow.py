"""The QA workflow's pure parts: the transition table and the instance checks."""

from __future__ import annotations

from typing import Any

import pytest

from pacs.services.errors import IllegalTransition
from pacs.services.qa_checks import (
    InstanceFacts,
    known_modality,
    patient_consistency,
    required_attributes,
    run_instance_checks,
    study_patient_consistency,
    valid_dates,
    valid_uids,
)
from pacs.services.workflow import Action, StudyState, can_decode, next_state
from storage.attributes import Level
from storage.index import FiledPatient

A, Q, R, X = (StudyState.ARCHIVED, StudyState.QUARANTINED, StudyState.RECEIVED,
              StudyState.REJECTED)


@pytest.mark.parametrize(("state", "action", "to"), [
    (R, Action.ARCHIVE, A), (R, Action.QUARANTINE, Q), (A, Action.QUARANTINE, Q),
    (Q, Action.ACCEPT, A), (Q, Action.REJECT, X), (A, Action.REJECT, X),
    (Q, Action.CORRECT, Q), (X, Action.PURGE, None),
])
def test_legal_transitions(state: StudyState, action: Action, to: StudyState | None) -> None:
    assert next_state(state, action) is to


@pytest.mark.parametrize(("state", "action"), [
    (A, Action.ACCEPT), (X, Action.ACCEPT), (X, Action.REJECT), (X, Action.CORRECT),
    (A, Action.PURGE), (Q, Action.PURGE),
])
def test_illegal_transitions_name_the_current_state(state: StudyState, action: Action) -> None:
    with pytest.raises(IllegalTransition) as raised:
        next_state(state, action)
    assert raised.value.current_state == state.value


def _facts(new_study: bool = True, filed: FiledPatient | None = None,
           ae: str | None = "CT1", **values: Any) -> InstanceFacts:
    base: dict[Level, dict[str, Any]] = {
        Level.PATIENT: {"patient_id": "P1", "patient_name": "Doe^Jane",
                        "patient_name_norm": "doe^jane", "patient_birth_date": "19800101",
                        "patient_sex": "F", "issuer_of_patient_id": None},
        Level.STUDY: {"study_instance_uid": "1.2.3", "study_date": "20240101"},
        Level.SERIES: {"series_instance_uid": "1.2.3.4", "modality": "CT"},
        Level.IMAGE: {"sop_instance_uid": "1.2.3.4.5"},
    }
    for key, value in values.items():
        for level_values in base.values():
            if key in level_values:
                level_values[key] = value
    return InstanceFacts(base, ae, new_study, filed)


def _filed(name: str = "doe^jane", archived: int = 1, **values: Any) -> FiledPatient:
    fields: dict[str, Any] = {
        "patient_id": "P1", "issuer_of_patient_id": "", "patient_name": name,
        "patient_name_norm": name, "patient_birth_date": "19800101", "patient_sex": "F",
        "existed": True, "archived_studies": archived,
    }
    fields.update(values)
    return FiledPatient(**fields)


def test_a_clean_instance_has_no_findings() -> None:
    assert run_instance_checks(_facts(filed=_filed())) == []


def test_required_uids_and_dates() -> None:
    assert "PatientName, Modality" in required_attributes(
        _facts(patient_name="", modality=None))[0].message
    assert valid_uids(_facts(study_instance_uid="1.02.3"))[0].code == "invalid-uid"
    assert valid_dates(_facts(study_date="20240231"))[0].code == "invalid-date"


def test_patient_consistency_only_against_archived_patients() -> None:
    other = _filed(name="smith^john")
    assert patient_consistency(_facts(filed=other))[0].code == "patient-mismatch"
    assert patient_consistency(_facts(filed=_filed(name="smith^john", archived=0))) == []
    assert patient_consistency(_facts(filed=_filed(name="DOE^JANE^^"))) == []  # same person
    sex = _filed(patient_sex="M")
    assert "PatientSex" in patient_consistency(_facts(filed=sex))[0].message


def test_study_patient_consistency_for_a_known_study() -> None:
    moved = _filed(patient_id="P2")
    found = study_patient_consistency(_facts(new_study=False, filed=moved))
    assert found[0].code == "study-patient-mismatch" and "P2" in found[0].message
    assert study_patient_consistency(_facts(new_study=False, filed=_filed())) == []


def test_known_modality_check() -> None:
    check = known_modality({"CT1"})
    assert check(_facts(ae="CT1")) == []
    assert check(_facts(ae="OTHER"))[0].code == "unknown-modality"
    assert known_modality(())(_facts(ae="OTHER")) == []


def test_the_pixel_check_skips_what_no_decoder_reads() -> None:
    assert can_decode("1.2.840.10008.1.2.5")  # RLE
    assert can_decode("1.2.840.10008.1.2.1")
    assert not can_decode("1.2.840.10008.1.2.4.100")  # MPEG2: stored, never decoded here
