from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from storage.attributes import ATTRIBUTES, REQUEST_ATTRIBUTES, Level, extract
from storage.index.models import TABLES, request_attribute
from storage.normalize import normalize_text
from tests.factories import datasets as f


def test_every_registry_attribute_has_an_indexed_column() -> None:
    for attribute in ATTRIBUTES:
        table = TABLES[attribute.level]
        assert attribute.column in table.c, attribute
        if attribute.vr not in {"LT", "UT"}:
            column_indexed = any(
                attribute.column in [c.name for c in index.columns] for index in table.indexes
            ) or any(attribute.column in [c.name for c in u.columns]
                     for u in table.constraints if hasattr(u, "columns"))
            assert column_indexed, f"{attribute.keyword} has no index"
        if attribute.vr == "PN":
            assert attribute.normalized in table.c
    for attribute in REQUEST_ATTRIBUTES:
        assert attribute.column in request_attribute.c


@pytest.mark.parametrize(
    "keyword",
    ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
     "AccessionNumber", "StudyID", "StudyInstanceUID", "ReferringPhysicianName",
     "StudyDescription", "Modality", "SeriesNumber", "SeriesInstanceUID",
     "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "SOPInstanceUID",
     "SOPClassUID", "InstanceNumber"],
)
def test_registry_covers_the_required_qr_and_qido_keys(keyword: str) -> None:
    assert keyword in {a.keyword for a in ATTRIBUTES}


def test_extract_decodes_character_sets_and_normalises_names() -> None:
    latin = pydicom.dcmread(pydicom.filebase.DicomBytesIO(
        f.to_part10_bytes(f.non_ascii_instance("ISO_IR 100", PatientID="L-1"))))

    values = extract(latin)

    name = values[Level.PATIENT]["patient_name"]
    assert name == str(latin.PatientName) and any(ord(c) > 127 for c in name)
    assert values[Level.PATIENT]["patient_name_norm"] == normalize_text(name)
    assert values[Level.PATIENT]["patient_name_norm"].isascii()


def test_extract_types_values_and_tolerates_absent_and_odd_ones() -> None:
    ds = Dataset()
    with pydicom.config.disable_value_validation():
        ds.StudyDate = "2024.01.31"  # ACR-NEMA style, still seen
        ds.SeriesNumber = "7"
        ds.PatientWeight = "72.5"
        ds.InstanceNumber = ""
        ds.StudyDescription = "HEAD\x00"
        values = extract(ds)

    assert values[Level.STUDY]["study_date"] == "20240131"
    assert values[Level.SERIES]["series_number"] == 7
    assert values[Level.STUDY]["patient_weight"] == 72.5
    assert values[Level.IMAGE]["instance_number"] is None
    assert values[Level.STUDY]["study_description"] == "HEAD"
    assert values[Level.PATIENT]["patient_name"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Müller^Jürgen", "muller^jurgen"), ("ØSTERGÅRD^SØREN", "ostergard^soren"),
     ("DOE^JOHN", "doe^john"), ("Łukasz*", "lukasz*")],
)
def test_normalize_text_ignores_case_and_accents(text: str, expected: str) -> None:
    assert normalize_text(text) == expected
