"""The automated QA checks: small pure functions, each with a code, a message and a severity.

Instance checks run inside the ingest of each instance (on the values the index extracted and
what the index already knew of the patient; no extra pass over the file). Study checks run
when a study is stable (no instance arrived for the stability period).

========================  ========  =====================================================
code                      severity  finds
========================  ========  =====================================================
missing-attribute         error     PatientID, PatientName, StudyInstanceUID,
                                    SeriesInstanceUID, SOPInstanceUID, Modality or
                                    StudyDate absent or empty
invalid-uid               error     a Study/Series/SOP Instance UID that is not a valid UID
                                    (PS3.5 9.1: digits and dots, no leading zeros, <= 64)
invalid-date              error     StudyDate or PatientBirthDate not a real YYYYMMDD date
patient-mismatch          error     the PatientID is already archived with another
                                    PatientName, PatientBirthDate or PatientSex
study-patient-mismatch    error     the StudyInstanceUID is already stored with other
                                    patient attributes
unknown-modality          error     the calling AE is not among the known modalities (when
                                    a list is configured)
pixel-data-undecodable    error     the first instance of a series has pixel data that
                                    cannot be decoded (study check)
order-mismatch            error     the study's order in the worklist (by Study Instance
                                    UID, else Accession Number) is for another PatientID,
                                    PatientName, PatientBirthDate or PatientSex
incomplete                error     a COMPLETED MPPS references instances that had not
                                    arrived when the study became stable (study check)
manual-review             info      ``--qa manual``: every new study waits for review
========================  ========  =====================================================

Only ``error`` findings quarantine a study.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from storage.attributes import Level
from storage.index import FiledPatient


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    severity: Severity = Severity.ERROR
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class InstanceFacts:
    """What an instance check looks at: the index values of the instance (by level and
    column, as ``storage.attributes.extract`` gives them), the sender, and the patient row its
    study is filed under (None when the index knew nothing before)."""

    values: Mapping[Level, Mapping[str, Any]]
    calling_ae: str | None
    new_study: bool
    filed: FiledPatient | None

    def value(self, level: Level, column: str) -> Any:
        return self.values[level].get(column)

    @property
    def sop_instance_uid(self) -> str | None:
        uid = self.value(Level.IMAGE, "sop_instance_uid")
        return str(uid) if uid else None


_REQUIRED = (
    (Level.PATIENT, "patient_id", "PatientID"),
    (Level.PATIENT, "patient_name", "PatientName"),
    (Level.STUDY, "study_instance_uid", "StudyInstanceUID"),
    (Level.SERIES, "series_instance_uid", "SeriesInstanceUID"),
    (Level.IMAGE, "sop_instance_uid", "SOPInstanceUID"),
    (Level.SERIES, "modality", "Modality"),
    (Level.STUDY, "study_date", "StudyDate"),
)
_UIDS = (
    (Level.STUDY, "study_instance_uid", "StudyInstanceUID"),
    (Level.SERIES, "series_instance_uid", "SeriesInstanceUID"),
    (Level.IMAGE, "sop_instance_uid", "SOPInstanceUID"),
)
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def required_attributes(facts: InstanceFacts) -> list[Finding]:
    missing = [keyword for level, column, keyword in _REQUIRED
               if not str(facts.value(level, column) or "").strip()]
    if not missing:
        return []
    return [Finding("missing-attribute", f"missing or empty: {', '.join(missing)}",
                    sop_instance_uid=facts.sop_instance_uid)]


def valid_uids(facts: InstanceFacts) -> list[Finding]:
    found = []
    for level, column, keyword in _UIDS:
        uid = str(facts.value(level, column) or "")
        if uid and (len(uid) > 64 or not _UID.match(uid)):
            found.append(Finding("invalid-uid", f"{keyword} {uid!r} is not a valid UID",
                                 sop_instance_uid=facts.sop_instance_uid))
    return found


def valid_dates(facts: InstanceFacts) -> list[Finding]:
    found = []
    for level, column, keyword in ((Level.STUDY, "study_date", "StudyDate"),
                                   (Level.PATIENT, "patient_birth_date", "PatientBirthDate")):
        text = str(facts.value(level, column) or "").strip()
        if text and not _is_date(text):
            found.append(Finding("invalid-date", f"{keyword} {text!r} is not a date (YYYYMMDD)",
                                 sop_instance_uid=facts.sop_instance_uid))
    return found


def _is_date(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


def _differences(facts: InstanceFacts, filed: FiledPatient) -> list[str]:
    """Patient attributes of the instance that differ from the patient row (both present)."""
    differ = []
    name = _name_form(facts.value(Level.PATIENT, "patient_name_norm"))
    if name and _name_form(filed.patient_name_norm) and name != _name_form(
        filed.patient_name_norm
    ):
        differ.append(f"PatientName {facts.value(Level.PATIENT, 'patient_name')!r} "
                      f"(archived: {filed.patient_name!r})")
    for column, keyword in (("patient_birth_date", "PatientBirthDate"),
                            ("patient_sex", "PatientSex")):
        mine = str(facts.value(Level.PATIENT, column) or "").strip()
        theirs = str(getattr(filed, column) or "").strip()
        if mine and theirs and mine != theirs:
            differ.append(f"{keyword} {mine!r} (archived: {theirs!r})")
    return differ


def _name_form(value: Any) -> str:
    """A name compared for identity: case and accents folded, empty components dropped."""
    if not value:
        return ""
    return "^".join(part.strip() for part in str(value).casefold().split("^")).rstrip("^ ")


def patient_consistency(facts: InstanceFacts) -> list[Finding]:
    """The same PatientID already archived with another name, birth date or sex."""
    filed = facts.filed
    if filed is None or not facts.new_study or not filed.existed or not filed.archived_studies:
        return []
    differ = _differences(facts, filed)
    if not differ:
        return []
    return [Finding(
        "patient-mismatch",
        f"PatientID {filed.patient_id!r} is archived with other values: {'; '.join(differ)}",
        sop_instance_uid=facts.sop_instance_uid,
    )]


def study_patient_consistency(facts: InstanceFacts) -> list[Finding]:
    """The same StudyInstanceUID stored with other patient attributes."""
    filed = facts.filed
    if filed is None or facts.new_study:
        return []
    differ = _differences(facts, filed)
    patient_id = str(facts.value(Level.PATIENT, "patient_id") or "")
    issuer = str(facts.value(Level.PATIENT, "issuer_of_patient_id") or "")
    if (patient_id, issuer) != (filed.patient_id, filed.issuer_of_patient_id):
        differ.insert(0, f"PatientID {patient_id!r} (stored: {filed.patient_id!r})")
    if not differ:
        return []
    study_uid = facts.value(Level.STUDY, "study_instance_uid")
    return [Finding(
        "study-patient-mismatch",
        f"study {study_uid} is stored with other patient attributes: {'; '.join(differ)}",
        sop_instance_uid=facts.sop_instance_uid,
    )]


def known_modality(
    modalities: Collection[str], registered: Callable[[str], bool] | None = None
) -> Callable[[InstanceFacts], list[Finding]]:
    """The calling AE must be one of ``modalities``, or an AE ``registered`` says may store
    (the AE registry); not checked when ``modalities`` is empty."""

    def check(facts: InstanceFacts) -> list[Finding]:
        if not modalities or facts.calling_ae is None or facts.calling_ae in modalities:
            return []
        if registered is not None and registered(facts.calling_ae):
            return []
        return [Finding("unknown-modality",
                        f"calling AE {facts.calling_ae!r} is not a known modality",
                        sop_instance_uid=facts.sop_instance_uid)]

    return check


InstanceCheck = Callable[[InstanceFacts], list[Finding]]

INSTANCE_CHECKS: tuple[InstanceCheck, ...] = (
    required_attributes, valid_uids, valid_dates, patient_consistency,
    study_patient_consistency,
)


def run_instance_checks(
    facts: InstanceFacts, checks: tuple[InstanceCheck, ...] = INSTANCE_CHECKS
) -> list[Finding]:
    found: list[Finding] = []
    for check in checks:
        found += check(facts)
    return found


def undecodable_pixel_data(sop_instance_uid: str, reason: str) -> Finding:
    return Finding("pixel-data-undecodable",
                   f"pixel data of {sop_instance_uid} cannot be decoded: {reason}",
                   sop_instance_uid=sop_instance_uid)


MANUAL_REVIEW = Finding("manual-review", "QA mode is manual: every new study waits for review",
                        Severity.INFO)
