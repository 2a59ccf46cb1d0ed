"""The query model without a database: PS3.4 C.2.2.2 value parsing and the DT/TM forms."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from storage.attributes import Level, extract, extract_converted
from storage.index.matching import like_pattern
from storage.query import (
    Computed,
    Condition,
    InvalidQueryValue,
    Query,
    Range,
    SequenceItem,
    SingleValue,
    UidList,
    ValueList,
    Wildcard,
    condition,
    sequence_condition,
)
from storage.temporal import datetime_utc, time_upper_bound
from tests.factories import datasets as f


@pytest.mark.parametrize("value", ["", "*", "**", "  "])
def test_empty_or_star_only_is_universal(value: str) -> None:
    assert condition("PatientName", value) is None
    assert condition("StudyDate", value) is None
    assert condition("StudyInstanceUID", value) is None


@pytest.mark.parametrize(
    ("keyword", "value", "matcher"),
    [
        ("PatientName", "doe*", Wildcard("doe*")),
        ("PatientID", "P?1", Wildcard("P?1")),
        ("PatientID", "A_1", SingleValue("A_1")),
        ("StudyInstanceUID", "1.2.3", SingleValue("1.2.3")),
        ("StudyInstanceUID", "1.2.3\\1.2.4", UidList(("1.2.3", "1.2.4"))),
        ("ModalitiesInStudy", "CT\\MR", ValueList(("CT", "MR"))),
        ("StudyDate", "20240101-20240131", Range("20240101", "20240131")),
        ("StudyDate", "-20231231", Range(None, "20231231")),
        ("StudyDate", "20240101-", Range("20240101", None)),
        ("StudyDate", "20240101", SingleValue("20240101")),
        ("StudyTime", "10-1030", Range("10", "1030")),
        ("StudyTime", "103015.123", SingleValue("103015.123")),
        ("AcquisitionDateTime", "20240101120000-0500", SingleValue("20240101120000-0500")),
        ("AcquisitionDateTime", "20240101-20240102120000+0100",
         Range("20240101", "20240102120000+0100")),
        ("AcquisitionDateTime", "-20240101120000-0500", Range(None, "20240101120000-0500")),
        ("SeriesNumber", "3", SingleValue("3")),
        ("StudyInstanceUID", "1.2.*", SingleValue("1.2.*")),  # no wildcards for UI
    ],
)
def test_values_become_the_matcher_ps34_asks_for(keyword: str, value: str, matcher: object) -> None:
    assert condition(keyword, value) == Condition(keyword, matcher)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("StudyDate", "2024-01-01", "not a DA value or range"),
        ("StudyDate", "2024010", "not a date"),
        ("StudyDate", "20241301", "not a calendar date"),
        ("StudyDate", "20240201-20240101", "ends before it starts"),
        ("StudyDate", "-", "without either end"),
        ("StudyTime", "2500", "not a time of day"),
        ("AcquisitionDateTime", "2024x", "not a date-time"),
        ("SeriesNumber", "three", "not a number"),
        ("NoSuchKeyword", "x", "not a DICOM keyword"),
    ],
)
def test_malformed_values_raise_a_clear_error(keyword: str, value: str, message: str) -> None:
    with pytest.raises(InvalidQueryValue, match=message):
        condition(keyword, value)


def test_sequence_condition_checks_the_item_keys() -> None:
    item = condition("RequestedProcedureID", "RP1")
    assert item is not None

    built = sequence_condition("RequestAttributesSequence", (item,))

    assert built == Condition("RequestAttributesSequence", SequenceItem((item,)))
    assert sequence_condition("RequestAttributesSequence", ()) is None
    with pytest.raises(InvalidQueryValue, match="cannot be matched"):
        sequence_condition("RequestAttributesSequence", (Condition("PatientID", item.matcher),))
    with pytest.raises(InvalidQueryValue, match="not supported"):
        sequence_condition("ReferencedSeriesSequence", (item,))


def test_query_keys_are_plain_strings_and_paging_is_checked() -> None:
    query = Query(Level.STUDY, return_keys=(Computed.ModalitiesInStudy, "StudyDate"))

    assert [type(k) for k in query.return_keys] == [str, str]
    with pytest.raises(InvalidQueryValue):
        Query(Level.STUDY, limit=-1)
    with pytest.raises(InvalidQueryValue):
        Query(Level.STUDY, offset=-5)


def test_like_pattern_escapes_before_translating_wildcards() -> None:
    assert like_pattern("a%b_c*d?") == "a\\%b\\_c%d_"
    assert like_pattern("x\\y*") == "x\\\\y%"


def test_partial_times_pad_to_the_end_of_their_period() -> None:
    assert time_upper_bound("10") == "109999.999999"
    assert time_upper_bound("1030") == "103099.999999"
    assert time_upper_bound("103015.1") == "103015.199999"
    assert "105959.5" <= time_upper_bound("10") < "11"


def test_date_times_are_compared_in_utc() -> None:
    assert datetime_utc("20240101120000+0100") == "20240101110000.000000"
    assert datetime_utc("20240101120000-0130") == "20240101133000.000000"
    assert datetime_utc("2024") == "20240101000000.000000"
    assert datetime_utc("20240101120000.5") == "20240101120000.500000"
    assert datetime_utc("garbage") is None


def test_extraction_fills_the_utc_form_of_date_times_consistently() -> None:
    ds = f.ct_instance(AcquisitionDateTime="20240101120000+0100")
    empty = Dataset()

    fast, converted = extract(ds), extract_converted(ds)

    assert fast == converted
    assert fast[Level.IMAGE]["acquisition_date_time"] == "20240101120000+0100"
    assert fast[Level.IMAGE]["acquisition_date_time_utc"] == "20240101110000.000000"
    assert extract(empty)[Level.IMAGE]["acquisition_date_time_utc"] is None
