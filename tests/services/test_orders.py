"""The order service on a real index (SQLite and PostgreSQL): orders are validated as DICOM
validates their values (each error names the keyword), identifiers are made when absent,
conflicts are refused, updates merge or replace steps, cancelling is idempotent, the
records' look-ups (accession, study, order numbers, filters) answer from the index, and
every change leaves its audit row."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from pacs.services.errors import Conflict, InvalidQuery, NotFound
from pacs.services.orders import (
    MAX_STEPS,
    OrderFilter,
    OrderReference,
    OrderService,
    StepsMode,
)
from storage.index import Index

WHO = "http:token:ris@127.0.0.1"


def order_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "PatientID": "PAT-1",
        "PatientName": "Müller^Jürgen",
        "PatientBirthDate": "19700101",
        "PatientSex": "M",
        "AccessionNumber": "ACC-1",
        "RequestedProcedureDescription": "CT head",
        "ScheduledProcedureStepSequence": [{
            "ScheduledStationAETitle": "CT1",
            "Modality": "CT",
            "ScheduledProcedureStepStartDate": "20261208",
            "ScheduledProcedureStepStartTime": "093000",
            "ScheduledProcedureStepDescription": "CT head plain",
        }],
    }
    body.update(changes)
    return body


@pytest.fixture
def orders(index: Index) -> OrderService:
    return OrderService(index=index)


def audit_rows(index: Index, action: str) -> list[Any]:
    with index.unit_of_work() as repository:
        return list(repository.audit.events(action=action, limit=100))


def test_create_makes_the_identifiers_and_writes_the_audit_row(
        orders: OrderService, index: Index) -> None:
    order = orders.create(order_body(), WHO)

    assert order.status == "scheduled" and order.source == "rest"
    assert order.patient_id == "PAT-1" and order.patient_name == "Müller^Jürgen"
    assert order.study_instance_uid.startswith("1.2.826.0.1.3680043.")  # pydicom's root
    assert order.requested_procedure_id and len(order.requested_procedure_id) <= 16
    (step,) = order.steps
    assert step.status == "SCHEDULED" and step.modality == "CT"
    assert step.step_id and len(step.step_id) <= 16
    (event,) = audit_rows(index, "order-create")
    assert event.actor == WHO and event.study_instance_uid == order.study_instance_uid
    assert event.detail["order_id"] == order.id
    assert event.detail["accession_number"] == "ACC-1" and event.detail["who"] == WHO
    assert orders.get(order.id) == order


@pytest.mark.parametrize(("changes", "named"), [
    ({"PatientID": None}, "PatientID"),
    ({"PatientID": "x" * 65}, "PatientID: at most 64"),
    ({"PatientName": "a^b^c^d^e^f"}, "PatientName"),
    ({"PatientName": "x" * 65}, "PatientName"),
    ({"PatientBirthDate": "1970-01-01"}, "PatientBirthDate"),
    ({"PatientBirthDate": "19701301"}, "PatientBirthDate"),
    ({"PatientSex": "X"}, "PatientSex"),
    ({"AccessionNumber": "A" * 17}, "AccessionNumber: at most 16"),
    ({"AccessionNumber": "A\\B"}, "AccessionNumber: a single value"),
    ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
    ({"StudyInstanceUID": "1.02.3"}, "StudyInstanceUID"),
    ({"RequestedProcedureID": 12}, "RequestedProcedureID: must be a string"),
    ({"Unknown": "x"}, "unknown keyword: 'Unknown'"),
    ({"ScheduledProcedureStepSequence": []}, "ScheduledProcedureStepSequence"),
    ({"ScheduledProcedureStepSequence": [{"Modality": "CT"}]},
     "ScheduledProcedureStepSequence[1].ScheduledStationAETitle: required"),
    ({"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT1"}]},
     "ScheduledProcedureStepSequence[1].Modality: required"),
    ({"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT1",
                                          "Modality": "ct"}]}, "[1].Modality"),
    ({"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT1", "Modality": "CT",
                                          "ScheduledProcedureStepStartTime": "2561"}]},
     "ScheduledProcedureStepStartTime"),
    ({"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "A" * 17,
                                          "Modality": "CT"}]}, "ScheduledStationAETitle"),
    ({"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT1", "Modality": "CT",
                                          "Colour": "red"}]}, "[1]: unknown keyword"),
    ({"ScheduledProcedureStepSequence": [
        {"ScheduledStationAETitle": "CT1", "Modality": "CT", "ScheduledProcedureStepID": "S"},
        {"ScheduledStationAETitle": "CT1", "Modality": "CT", "ScheduledProcedureStepID": "S"},
    ]}, "[2].ScheduledProcedureStepID: 'S' is given twice"),
    ({"ScheduledProcedureStepSequence": [
        {"ScheduledStationAETitle": "CT1", "Modality": "CT"}] * (MAX_STEPS + 1)},
     f"at most {MAX_STEPS} items"),
])
def test_invalid_values_are_refused_naming_the_keyword(
        orders: OrderService, index: Index, changes: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidQuery, match=None) as refused:
        orders.create(order_body(**changes), WHO)
    assert named in str(refused.value)
    assert orders.list(OrderFilter()) == [] and audit_rows(index, "order-create") == []


def test_valid_edge_values_are_taken(orders: OrderService) -> None:
    order = orders.create(order_body(
        PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", PatientSex="O",
        ScheduledProcedureStepSequence=[{
            "ScheduledStationAETitle": "CT 1", "Modality": "CT",
            "ScheduledProcedureStepStartTime": "093000.123456"}]), WHO)
    assert order.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert order.steps[0].start_time == "093000.123456"


def test_study_and_accession_conflicts(orders: OrderService) -> None:
    first = orders.create(order_body(StudyInstanceUID="1.2.3.4"), WHO)
    with pytest.raises(Conflict, match="StudyInstanceUID 1.2.3.4 belongs to order"):
        orders.create(order_body(StudyInstanceUID="1.2.3.4", AccessionNumber="ACC-2"), WHO)
    with pytest.raises(Conflict, match="AccessionNumber 'ACC-1' belongs to order"):
        orders.create(order_body(), WHO)
    orders.cancel(first.id, WHO)
    # a cancelled order's accession may be used again; its study stays its own
    again = orders.create(order_body(), WHO)
    assert again.accession_number == "ACC-1"
    with pytest.raises(Conflict, match="StudyInstanceUID"):
        orders.create(order_body(StudyInstanceUID="1.2.3.4", AccessionNumber="ACC-3"), WHO)
    assert [o.id for o in orders.by_accession_number("ACC-1")] == [first.id, again.id]
    found = orders.by_study_instance_uid("1.2.3.4")
    assert found is not None and found.id == first.id
    assert orders.by_study_instance_uid("9.9") is None


def test_update_merges_steps_by_id_and_is_audited(orders: OrderService, index: Index) -> None:
    body = order_body()
    body["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepID"] = "SPS1"
    order = orders.create(body, WHO)

    changed = orders.update(order.id, {
        "PatientName": "Doe^Jane", "PatientBirthDate": None,
        "ScheduledProcedureStepSequence": [
            {"ScheduledProcedureStepID": "SPS1", "ScheduledStationAETitle": "CT2"},
            {"ScheduledStationAETitle": "MR1", "Modality": "MR"},
        ]}, WHO)

    assert changed.patient_name == "Doe^Jane" and changed.patient_birth_date is None
    assert changed.accession_number == "ACC-1"
    first, second = changed.steps
    assert (first.step_id, first.station_ae_title, first.modality) == ("SPS1", "CT2", "CT")
    assert second.modality == "MR" and second.status == "SCHEDULED" and second.step_id
    (event,) = audit_rows(index, "order-update")
    assert event.detail["order_id"] == order.id
    assert "PatientName" in event.detail["changed"]
    # found again by its match form, not its spelling
    assert [o.id for o in orders.list(OrderFilter(patient_name="doe"))] == [order.id]


def test_update_refusals(orders: OrderService) -> None:
    order = orders.create(order_body(), WHO)
    other = orders.create(order_body(AccessionNumber="ACC-2"), WHO)
    with pytest.raises(Conflict, match="AccessionNumber 'ACC-2'"):
        orders.update(order.id, {"AccessionNumber": "ACC-2"}, WHO)
    with pytest.raises(Conflict, match="StudyInstanceUID"):
        orders.update(order.id, {"StudyInstanceUID": other.study_instance_uid}, WHO)
    with pytest.raises(InvalidQuery, match="PatientID: required"):
        orders.update(order.id, {"PatientID": None}, WHO)
    with pytest.raises(InvalidQuery, match=r"\[1\].Modality: required for a new step"):
        orders.update(order.id, {"ScheduledProcedureStepSequence": [
            {"ScheduledStationAETitle": "CT9"}]}, WHO)
    with pytest.raises(NotFound, match="no order 999999"):
        orders.update(999999, {"PatientName": "x"}, WHO)
    orders.cancel(order.id, WHO)
    with pytest.raises(Conflict, match="is cancelled"):
        orders.update(order.id, {"PatientName": "x"}, WHO)


def test_replace_keeps_step_ids_by_position_and_drops_the_rest(orders: OrderService) -> None:
    body = order_body()
    body["ScheduledProcedureStepSequence"] = [
        {"ScheduledStationAETitle": "CT1", "Modality": "CT", "ScheduledProcedureStepID": "A"},
        {"ScheduledStationAETitle": "CT1", "Modality": "CT", "ScheduledProcedureStepID": "B"},
    ]
    orders.create(body, WHO)
    replacement = copy.deepcopy(order_body())
    replacement["ScheduledProcedureStepSequence"][0]["ScheduledStationAETitle"] = "CT7"

    changed = orders.update(OrderReference(accession_number="ACC-1"), replacement, WHO,
                            steps_mode=StepsMode.REPLACE)

    (step,) = changed.steps
    assert (step.step_id, step.station_ae_title) == ("A", "CT7")


def test_cancel_is_idempotent_and_audited_once(orders: OrderService, index: Index) -> None:
    order = orders.create(order_body(), WHO)
    cancelled = orders.cancel(order.id, WHO)
    assert cancelled.status == "cancelled"
    assert {step.status for step in cancelled.steps} == {"CANCELED"}
    assert orders.cancel(order.id, WHO) == cancelled
    assert len(audit_rows(index, "order-cancel")) == 1
    with pytest.raises(NotFound):
        orders.cancel(999999, WHO)


def test_discontinue_and_references(orders: OrderService) -> None:
    orders.create(order_body(PlacerOrderNumberImagingServiceRequest="P-1",
                             FillerOrderNumberImagingServiceRequest="F-1"), WHO)
    with pytest.raises(NotFound, match="filler order number 'F-9'"):
        orders.cancel(OrderReference(filler_order_number="F-9"), WHO)
    stopped = orders.cancel(OrderReference(placer_order_number="P-1"), WHO, discontinue=True)
    assert stopped.status == "discontinued"
    assert {step.status for step in stopped.steps} == {"DISCONTINUED"}


def test_list_filters_and_pages(orders: OrderService) -> None:
    made = []
    for number, (patient, date) in enumerate(
            [("PAT-1", "20261201"), ("PAT-12", "20261205"), ("OTHER_1", "20261210")]):
        body = order_body(PatientID=patient, AccessionNumber=f"ACC-{number}")
        body["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStartDate"] = date
        made.append(orders.create(body, WHO))
    orders.cancel(made[0].id, WHO)

    def ids(**criteria: Any) -> list[int]:
        return [order.id for order in orders.list(OrderFilter(**criteria))]

    assert ids() == [made[2].id, made[1].id, made[0].id]
    assert ids(patient_id="PAT-1") == [made[1].id, made[0].id]
    assert ids(patient_id="OTHER%") == []  # % is no wildcard
    assert ids(patient_id="OTHER_") == [made[2].id]
    assert ids(status="scheduled") == [made[2].id, made[1].id]
    assert ids(accession_number="ACC-1") == [made[1].id]
    assert ids(date_from="20261202", date_to="20261209") == [made[1].id]
    assert ids(limit=1, offset=1) == [made[1].id]
    with pytest.raises(InvalidQuery, match="date_from"):
        orders.list(OrderFilter(date_from="2026-12-01"))


def test_set_step_status(orders: OrderService, index: Index) -> None:
    body = order_body()
    body["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepID"] = "S1"
    order = orders.create(body, WHO)
    with index.unit_of_work(write=True) as repository:
        assert repository.orders.set_step_status(order.id, "S1", "STARTED")
        assert not repository.orders.set_step_status(order.id, "nope", "STARTED")
    assert orders.get(order.id).steps[0].status == "STARTED"


def test_concurrent_creates_of_one_accession_make_one_order(orders: OrderService) -> None:
    outcomes: list[str] = []

    def create() -> None:
        try:
            orders.create(order_body(), WHO)
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(orders.list(OrderFilter(accession_number="ACC-1"))) == 1
    assert sorted(outcomes) == ["conflict"] * 3 + ["created"]
