"""Worklist queries compiled to SQL (``storage.index.worklist``), on SQLite and PostgreSQL:
the matching rules of Q/R (PS3.4 C.2.2.2) on the keys of PS3.4 Table K.6-1, the default of
steps still to be done (K.6.1.2), the combined date-time range (C.2.2.2.5.1) and the LIMIT."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from storage.index import Index
from storage.index.worklist import worklist_statement
from storage.query import Condition, InvalidQueryValue, SingleValue, condition
from storage.worklist import BY_KEYWORD, WorklistQuery
from tests.factories.worklist import Order, Step, schedule

ORDERS = (
    Order("P-DOE-1", "Doe^John", accession_number="ACC-1", requested_procedure_id="RP-1",
          steps=(Step("S1", "CT1", modality="CT", start_date="20261207", start_time="080000"),
                 Step("S2", "CT1", modality="CT", start_date="20261207", start_time="140000",
                      performing_physician_name="Tech^Tom"))),
    Order("P-DOE-2", "DOE^JANE", accession_number="ACC-2",
          steps=(Step("S1", "MR1", modality="MR", start_date="20261208", start_time="090000"),)),
    Order("P-MUE", "Müller^Jürgen", accession_number="ACC-3",
          steps=(Step("S1", "US1", modality="US", start_date="20261206", start_time="235900"),)),
    Order("50%_OFF", "50%_Off^Anna", accession_number="ACC-4",
          steps=(Step("S1", "CT2", modality="CT", start_date="20261210", start_time="100000"),)),
    Order("50XXOFF", "50XXOff^Bob", accession_number="ACC-5",
          steps=(Step("S1", "CT2", modality="CT", start_date="20261211", start_time="100000"),)),
    # not to be done any more: a step completed, a step cancelled, a cancelled order
    Order("P-DONE", "Done^Dora", accession_number="ACC-6",
          steps=(Step("S1", "CT1", start_date="20261207", status="COMPLETED"),
                 Step("S2", "CT1", start_date="20261207", status="CANCELED"),
                 Step("S3", "CT1", start_date="20261207", status="ARRIVED"))),
    Order("P-CANC", "Cancelled^Carl", accession_number="ACC-7", status="cancelled",
          steps=(Step("S1", "CT1", start_date="20261207"),)),
)


@pytest.fixture(scope="module")
def index(module_database_url: str) -> Iterator[Index]:
    index = Index(module_database_url)
    index.upgrade()
    schedule(index, ORDERS)
    try:
        yield index
    finally:
        index.dispose()


def _c(keyword: str, value: str) -> Condition:
    found = condition(keyword, value, BY_KEYWORD[keyword].vr)
    assert found is not None
    return found


def _find(index: Index, *conditions: Condition, limit: int | None = None,
          fuzzy_person_names: bool = True, combined_datetime: bool = False
          ) -> list[tuple[str, str]]:
    """(PatientID, ScheduledProcedureStepID) of each match, in the order returned."""
    query = WorklistQuery(conditions=conditions, limit=limit,
                          fuzzy_person_names=fuzzy_person_names,
                          combined_datetime=combined_datetime)
    with index.unit_of_work() as repository:
        return [(str(r["PatientID"]), str(r["ScheduledProcedureStepID"]))
                for r in repository.worklist.find(query)]


def test_universal_query_returns_steps_to_be_done_in_scheduled_order(index: Index) -> None:
    assert _find(index) == [
        ("P-MUE", "S1"), ("P-DOE-1", "S1"), ("P-DONE", "S3"), ("P-DOE-1", "S2"),
        ("P-DOE-2", "S1"), ("50%_OFF", "S1"), ("50XXOFF", "S1"),
    ]


def test_station_ae_title_single_value_and_wildcard(index: Index) -> None:
    assert _find(index, _c("ScheduledStationAETitle", "CT1")) == [
        ("P-DOE-1", "S1"), ("P-DONE", "S3"), ("P-DOE-1", "S2")]
    assert {p for p, _ in _find(index, _c("ScheduledStationAETitle", "CT*"))} == {
        "P-DOE-1", "P-DONE", "50%_OFF", "50XXOFF"}


def test_modality_single_and_list(index: Index) -> None:
    assert {p for p, _ in _find(index, _c("Modality", "MR"))} == {"P-DOE-2"}
    assert {p for p, _ in _find(index, _c("Modality", "MR\\US"))} == {"P-DOE-2", "P-MUE"}


@pytest.mark.parametrize(("value", "expected"), [
    ("20261207", {"P-DOE-1", "P-DONE"}),
    ("20261207-20261208", {"P-DOE-1", "P-DONE", "P-DOE-2"}),
    ("-20261206", {"P-MUE"}),  # open at the start
    ("20261210-", {"50%_OFF", "50XXOFF"}),  # open at the end
])
def test_start_date_single_and_ranges(index: Index, value: str, expected: set[str]) -> None:
    assert {p for p, _ in _find(index, _c("ScheduledProcedureStepStartDate", value))} == expected


def test_start_time_range_alone_and_with_a_date(index: Index) -> None:
    mornings = _find(index, _c("ScheduledProcedureStepStartTime", "0700-1000"))
    assert {p for p, _ in mornings} == {"P-DOE-1", "P-DONE", "P-DOE-2", "50%_OFF", "50XXOFF"}
    afternoon = _find(index, _c("ScheduledProcedureStepStartDate", "20261207"),
                      _c("ScheduledProcedureStepStartTime", "1200-"))
    assert afternoon == [("P-DOE-1", "S2")]


def test_combined_date_time_range(index: Index) -> None:
    """C.2.2.2.5.1: 20261207 12:00 to 20261208 09:30 is one period, not two ranges."""
    keys = (_c("ScheduledProcedureStepStartDate", "20261207-20261208"),
            _c("ScheduledProcedureStepStartTime", "1200-0930"))
    assert _find(index, *keys, combined_datetime=True) == [("P-DOE-1", "S2"), ("P-DOE-2", "S1")]
    # matched on their own, 1200-0930 is a time range across midnight, on either day
    assert _find(index, *keys) == [("P-DOE-1", "S1"), ("P-DONE", "S3"), ("P-DOE-1", "S2"),
                                   ("P-DOE-2", "S1")]
    open_start = (_c("ScheduledProcedureStepStartDate", "20261207-"),
                  _c("ScheduledProcedureStepStartTime", "1200-"))
    assert _find(index, *open_start, combined_datetime=True) == [
        ("P-DOE-1", "S2"), ("P-DOE-2", "S1"), ("50%_OFF", "S1"), ("50XXOFF", "S1")]


def test_patient_name_wildcard_ignores_case_and_accents(index: Index) -> None:
    assert {p for p, _ in _find(index, _c("PatientName", "doe*"))} == {"P-DOE-1", "P-DOE-2"}
    assert _find(index, _c("PatientName", "MULLER^J?RGEN")) == [("P-MUE", "S1")]
    assert _find(index, _c("PatientName", "doe^jane")) == [("P-DOE-2", "S1")]
    assert _find(index, _c("PatientName", "Doe^John"), fuzzy_person_names=False) != []
    assert _find(index, _c("PatientName", "doe^john"), fuzzy_person_names=False) == []


def test_percent_and_underscore_in_data_are_literal(index: Index) -> None:
    assert _find(index, _c("PatientName", "50%_*")) == [("50%_OFF", "S1")]
    assert _find(index, _c("PatientID", "50%_*")) == [("50%_OFF", "S1")]
    assert _find(index, _c("PatientID", "50??OFF")) == [("50%_OFF", "S1"), ("50XXOFF", "S1")]


def test_patient_id_accession_and_request_keys(index: Index) -> None:
    assert {s for _, s in _find(index, _c("PatientID", "P-DOE-1"))} == {"S1", "S2"}
    assert _find(index, _c("AccessionNumber", "ACC-2")) == [("P-DOE-2", "S1")]
    assert {p for p, _ in _find(index, _c("RequestedProcedureID", "RP-1"))} == {"P-DOE-1"}
    assert _find(index, _c("ScheduledProcedureStepID", "S2"),
                 _c("PatientID", "P-DOE-1")) == [("P-DOE-1", "S2")]
    assert _find(index, _c("ScheduledPerformingPhysicianName", "Tech^Tom")) == [
        ("P-DOE-1", "S2")]
    uids = "\\".join(o.study_uid for o in ORDERS[:2])
    assert {p for p, _ in _find(index, _c("StudyInstanceUID", uids))} == {"P-DOE-1", "P-DOE-2"}


def test_status_asked_replaces_the_default(index: Index) -> None:
    assert _find(index, _c("ScheduledProcedureStepStatus", "COMPLETED")) == [("P-DONE", "S1")]
    assert {s for _, s in _find(index, _c("PatientID", "P-DONE"),
                                _c("ScheduledProcedureStepStatus", "CANCELED\\COMPLETED"))
            } == {"S1", "S2"}
    # a cancelled order's steps are left out while the statuses asked are those to be done
    assert _find(index, _c("PatientID", "P-CANC")) == []
    assert _find(index, _c("PatientID", "P-CANC"),
                 _c("ScheduledProcedureStepStatus", "SCHEDULED")) == []
    assert _find(index, _c("PatientID", "P-CANC"),
                 _c("ScheduledProcedureStepStatus", "SCHEDULED\\CANCELED")) == [("P-CANC", "S1")]


def test_limit_is_in_sql(index: Index) -> None:
    assert _find(index, limit=2) == [("P-MUE", "S1"), ("P-DOE-1", "S1")]
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(worklist_statement(WorklistQuery(limit=2)).compile(dialect=dialect))
        assert "LIMIT" in sql and sql.count("SELECT") == 1


def test_records_carry_every_attribute(index: Index) -> None:
    with index.unit_of_work() as repository:
        [record] = repository.worklist.find(WorklistQuery(
            conditions=(_c("AccessionNumber", "ACC-3"),)))
    assert record["PatientName"] == "Müller^Jürgen"
    assert record["ScheduledStationAETitle"] == "US1"
    assert record["ScheduledProcedureStepStartTime"] == "235900"
    assert record["StudyInstanceUID"] == ORDERS[2].study_uid
    assert set(record) == set(BY_KEYWORD)


def test_a_key_that_is_not_a_worklist_key_is_refused() -> None:
    with pytest.raises(InvalidQueryValue, match="SeriesInstanceUID"):
        WorklistQuery(conditions=(Condition("SeriesInstanceUID", SingleValue("1.2.3")),))
