"""The one registry of indexed attributes: keyword, tag, VR, level, column.

It drives extraction at ingest (:func:`extract`), the index columns (``storage.index.models``
has one column per entry, checked by a test), query matching and query responses.

Covers the Patient Root and Study Root Q/R keys of PS3.4 C.6.1.1 and C.6.2.1 and the QIDO-RS
matching attributes of PS3.18 Table 10.6.1-5. Computed keys (ModalitiesInStudy, the Number of
... Related ... counts, SOPClassesInStudy) are derived in SQL, not stored here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from storage.normalize import normalize_text
from storage.temporal import datetime_utc


class Level(StrEnum):
    """Query/Retrieve levels, PS3.4 C.3."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


DEPTH: dict[Level, int] = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}
"""How far down the hierarchy a level is (PATIENT 0 ... IMAGE 3)."""


@dataclass(frozen=True)
class Attribute:
    """An indexed attribute. ``normalized`` names the column holding its match form.

    PN: case- and accent-folded text (PS3.4 C.2.2.2.1); DT: the first instant in UTC
    (:mod:`storage.temporal`), so values with different UTC offsets compare.
    """

    keyword: str
    vr: str
    level: Level
    column: str
    normalized: str | None = None

    @property
    def tag(self) -> int:
        return int(Tag(self.keyword))


_MATCH_FORM_SUFFIX = {"PN": "_norm", "DT": "_utc"}


def _a(keyword: str, vr: str, level: Level, column: str) -> Attribute:
    suffix = _MATCH_FORM_SUFFIX.get(vr)
    return Attribute(keyword, vr, level, column, f"{column}{suffix}" if suffix else None)


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient level (PS3.4 C.6.1.1.2)
    _a("PatientName", "PN", P, "patient_name"),
    _a("PatientID", "LO", P, "patient_id"),
    _a("IssuerOfPatientID", "LO", P, "issuer_of_patient_id"),
    _a("PatientBirthDate", "DA", P, "patient_birth_date"),
    _a("PatientBirthTime", "TM", P, "patient_birth_time"),
    _a("PatientSex", "CS", P, "patient_sex"),
    _a("EthnicGroup", "SH", P, "ethnic_group"),
    _a("PatientComments", "LT", P, "patient_comments"),
    # Study level (PS3.4 C.6.1.1.3, C.6.2.1.2; PS3.18 Table 10.6.1-5)
    _a("StudyInstanceUID", "UI", ST, "study_instance_uid"),
    _a("StudyDate", "DA", ST, "study_date"),
    _a("StudyTime", "TM", ST, "study_time"),
    _a("AccessionNumber", "SH", ST, "accession_number"),
    _a("StudyID", "SH", ST, "study_id"),
    _a("ReferringPhysicianName", "PN", ST, "referring_physician_name"),
    _a("StudyDescription", "LO", ST, "study_description"),
    _a("NameOfPhysiciansReadingStudy", "PN", ST, "name_of_physicians_reading_study"),
    _a("AdmittingDiagnosesDescription", "LO", ST, "admitting_diagnoses_description"),
    _a("PatientAge", "AS", ST, "patient_age"),
    _a("PatientSize", "DS", ST, "patient_size"),
    _a("PatientWeight", "DS", ST, "patient_weight"),
    _a("Occupation", "SH", ST, "occupation"),
    _a("AdditionalPatientHistory", "LT", ST, "additional_patient_history"),
    _a("InstitutionName", "LO", ST, "institution_name"),
    _a("TimezoneOffsetFromUTC", "SH", ST, "timezone_offset_from_utc"),
    # Series level (PS3.4 C.6.1.1.4; PS3.18 Table 10.6.1-5)
    _a("SeriesInstanceUID", "UI", SE, "series_instance_uid"),
    _a("Modality", "CS", SE, "modality"),
    _a("SeriesNumber", "IS", SE, "series_number"),
    _a("SeriesDescription", "LO", SE, "series_description"),
    _a("SeriesDate", "DA", SE, "series_date"),
    _a("SeriesTime", "TM", SE, "series_time"),
    _a("PerformedProcedureStepStartDate", "DA", SE, "performed_procedure_step_start_date"),
    _a("PerformedProcedureStepStartTime", "TM", SE, "performed_procedure_step_start_time"),
    _a("BodyPartExamined", "CS", SE, "body_part_examined"),
    _a("ProtocolName", "LO", SE, "protocol_name"),
    _a("StationName", "SH", SE, "station_name"),
    _a("Manufacturer", "LO", SE, "manufacturer"),
    # Image level (PS3.4 C.6.1.1.5; PS3.18 Table 10.6.1-5 and 10.6.3-5)
    _a("SOPInstanceUID", "UI", IM, "sop_instance_uid"),
    _a("SOPClassUID", "UI", IM, "sop_class_uid"),
    _a("InstanceNumber", "IS", IM, "instance_number"),
    _a("ContentDate", "DA", IM, "content_date"),
    _a("ContentTime", "TM", IM, "content_time"),
    _a("AcquisitionDateTime", "DT", IM, "acquisition_date_time"),
    _a("NumberOfFrames", "IS", IM, "number_of_frames"),
    _a("Rows", "US", IM, "rows"),
    _a("Columns", "US", IM, "columns"),
    _a("BitsAllocated", "US", IM, "bits_allocated"),
)

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in ATTRIBUTES}
BY_LEVEL: dict[Level, tuple[Attribute, ...]] = {
    level: tuple(a for a in ATTRIBUTES if a.level is level) for level in Level
}

# Items of RequestAttributesSequence (0040,0275), one row each, matched by sequence matching.
REQUEST_ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("RequestedProcedureID", "SH", SE, "requested_procedure_id"),
    Attribute("ScheduledProcedureStepID", "SH", SE, "scheduled_procedure_step_id"),
)

# String lengths of the index columns, by VR (PS3.5 Table 6.2-1 maxima, generous for PN/LO).
COLUMN_LENGTH: dict[str, int] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DT": 26, "LO": 64, "LT": 10240, "PN": 324,
    "SH": 16, "TM": 16, "UI": 64,
}

_DA_LEGACY = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # ACR-NEMA 2.0 dates, still seen


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).replace("\x00", "").strip() or None
    return str(value).replace("\x00", "").strip() or None


def _person_name(value: Any) -> str | None:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(filter(None, (_person_name(v) for v in value))) or None
    if isinstance(value, PersonName):
        return str(value).strip() or None
    return _text(value)


def _date(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    legacy = _DA_LEGACY.match(text)
    if legacy:
        text = "".join(legacy.groups())
    return text if len(text) == 8 and text.isdigit() else None


def _integer(value: Any) -> int | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    if isinstance(value, str):
        value = value.split("\\", 1)[0].strip()
    if value is None or value == "":
        return None
    try:
        return int(float(str(value)))
    except ValueError:
        return None


def _decimal(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    if isinstance(value, str):
        value = value.split("\\", 1)[0].strip()
    if value is None or value == "":
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "PN": _person_name, "DA": _date, "IS": _integer, "US": _integer, "DS": _decimal,
}


def column_value(attribute: Attribute, value: Any) -> Any:
    """The index form of a dataset value: UTF-8 text, ``YYYYMMDD`` dates, numbers."""
    convert: Callable[[Any], Any] = _CONVERT.get(attribute.vr, _text)
    converted = convert(value)
    if isinstance(converted, str):
        limit = COLUMN_LENGTH.get(attribute.vr)
        if limit is not None and len(converted) > limit:
            converted = converted[:limit]
    return converted


def extract(
    dataset: Dataset, elements: Mapping[int, Any] | None = None
) -> dict[Level, dict[str, Any]]:
    """Index values per level from a dataset (text decoded by SpecificCharacterSet).

    Absent and empty attributes become ``None``. PN attributes also fill their normalised
    column (case- and accent-insensitive match form). Values still raw (as read) in a single
    byte or UTF-8 character set are decoded here directly, which is several times cheaper than
    pydicom's conversion; anything else is left to pydicom. ``elements``: the dataset's own
    elements by tag, when the caller has them (it spares pydicom's tag conversions).
    """
    codec = _simple_codec(dataset)
    values: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    for attribute, tag in _TAGGED:
        # by tag, not keyword: this runs for every received instance
        if elements is not None:
            raw = elements.get(tag)
            value = None if raw is None else _value(dataset, attribute, tag, codec, raw)
        else:
            value = _value(dataset, attribute, tag, codec) if tag in dataset else None
        row = values[attribute.level]
        row[attribute.column] = value
        if attribute.normalized:
            row[attribute.normalized] = match_form(attribute, value)
    return values


def extract_converted(dataset: Dataset) -> dict[Level, dict[str, Any]]:
    """:func:`extract` through pydicom's own value conversion (the reference it must equal)."""
    values: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    for attribute, tag in _TAGGED:
        value = column_value(attribute, dataset[tag].value) if tag in dataset else None
        values[attribute.level][attribute.column] = value
        if attribute.normalized:
            values[attribute.level][attribute.normalized] = match_form(attribute, value)
    return values


def match_form(attribute: Attribute, value: Any) -> str | None:
    """The value of ``attribute.normalized``: folded PN text, or a DT as UTC."""
    if not value:
        return None
    if attribute.vr == "DT":
        return datetime_utc(value)
    return normalize_text(value)


# Specific Character Set values whose bytes one Python codec decodes (PS3.3 C.12.1.1.2).
_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
_ASCII_VRS = frozenset({"UI", "CS", "DA", "TM", "DT", "IS", "DS", "AS", "AE"})


def _simple_codec(dataset: Dataset) -> str | None:
    raw = dataset.get_item(0x00080005, keep_deferred=True) if 0x00080005 in dataset else None
    if raw is None:
        return _CODECS[""]
    value = raw.value
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("ascii", "replace").strip(" \x00")
    elif isinstance(value, str):
        text = value.strip()
    else:
        return None  # multi-valued: code extensions (ISO 2022) are pydicom's job
    return _CODECS.get(text)


def _value(
    dataset: Dataset, attribute: Attribute, tag: int, codec: str | None, raw: Any = None
) -> Any:
    if raw is None:
        raw = dataset.get_item(tag, keep_deferred=True)
    if (
        codec is not None
        and isinstance(raw, RawDataElement)
        and isinstance(raw.value, bytes)
        and raw.is_little_endian
    ):
        vr = attribute.vr
        if vr in _TEXT_VRS:
            return column_value(attribute, raw.value.decode(codec, "replace").rstrip(" \x00"))
        if vr in _ASCII_VRS:
            return column_value(attribute, raw.value.decode("latin_1").strip(" \x00"))
        if vr == "US" and len(raw.value) >= 2:
            return int.from_bytes(raw.value[:2], "little")
    return column_value(attribute, dataset[tag].value)


_TAGGED: tuple[tuple[Attribute, int], ...] = tuple((a, a.tag) for a in ATTRIBUTES)
_REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275

# Every top-level tag extraction reads (a reader may skip all others).
INDEXED_TAGS: frozenset[int] = frozenset(
    {tag for _, tag in _TAGGED} | {_REQUEST_ATTRIBUTES_SEQUENCE}
)


def request_attributes(dataset: Dataset) -> list[dict[str, Any]]:
    """One row per RequestAttributesSequence item (PS3.4 C.6.1.1.4)."""
    rows = []
    for item in dataset.get("RequestAttributesSequence", None) or []:
        rows.append({a.column: column_value(a, item.get(a.keyword)) for a in REQUEST_ATTRIBUTES})
    return rows
