"""Imaging orders over REST against a real ``pacs serve --auth required`` on SQLite and
PostgreSQL: create / get / list / patch / delete in DICOM keywords, every refused value
named, conflicts answered 409, the qa role on every route (viewer and uploader refused, no
credential 401), a browser's cross-site POST refused, and the audit rows naming who."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.server import PacsServer, bearer, token

QA_ACTOR = "http:token:qa@127.0.0.1"


@dataclass
class Site:
    server: PacsServer
    tokens: dict[str, str]

    def call(self, method: str, path: str, who: str | None = "qa",
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(bearer(self.tokens[who]))
        return httpx.request(method, f"{self.server.base_url}{path}", headers=headers,
                             timeout=30, **kwargs)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("orders-rest")
    server = PacsServer(data_dir=root / "data", database_url=module_database_url,
                        extra_args=["--auth", "required", "--dimse-processes", "1"])
    tokens = {role: token(server, role, role) for role in ("viewer", "uploader", "qa", "admin")}
    server.start()
    try:
        yield Site(server, tokens)
    finally:
        server.stop()


def new_order(accession: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "PatientID": "REST-1",
        "IssuerOfPatientID": "HOSP",
        "PatientName": "Müller^Jürgen",
        "PatientBirthDate": "19700101",
        "PatientSex": "M",
        "AccessionNumber": accession,
        "RequestedProcedureDescription": "CT head",
        "ReferringPhysicianName": "House^Gregory",
        "PlacerOrderNumberImagingServiceRequest": f"P-{accession}",
        "ScheduledProcedureStepSequence": [{
            "ScheduledStationAETitle": "CT1",
            "Modality": "CT",
            "ScheduledProcedureStepStartDate": "20261208",
            "ScheduledProcedureStepStartTime": "093000",
            "ScheduledProcedureStepDescription": "CT head plain",
            "ScheduledStationName": "CT ROOM 1",
        }],
    }
    body.update(changes)
    return body


def test_create_get_list_patch_cancel(site: Site) -> None:
    made = site.call("POST", "/api/orders", json=new_order("R-1"))
    assert made.status_code == 201, made.text
    order = made.json()
    assert order["status"] == "scheduled" and order["source"] == "rest"
    assert order["PatientName"] == "Müller^Jürgen" and order["IssuerOfPatientID"] == "HOSP"
    assert order["StudyInstanceUID"] and order["RequestedProcedureID"]
    (step,) = order["ScheduledProcedureStepSequence"]
    assert step["ScheduledProcedureStepStatus"] == "SCHEDULED"
    assert step["ScheduledProcedureStepID"] and step["ScheduledStationName"] == "CT ROOM 1"

    got = site.call("GET", f"/api/orders/{order['id']}")
    assert got.status_code == 200 and got.json() == order

    listed = site.call("GET", "/api/orders", params={"accession_number": "R-1"})
    assert listed.status_code == 200 and [o["id"] for o in listed.json()] == [order["id"]]
    by_name = site.call("GET", "/api/orders", params={"patient_name": "muller"})
    assert order["id"] in [o["id"] for o in by_name.json()]
    out_of_range = site.call("GET", "/api/orders", params={"date_from": "20270101"})
    assert order["id"] not in [o["id"] for o in out_of_range.json()]

    patched = site.call("PATCH", f"/api/orders/{order['id']}", json={
        "PatientName": "Doe^Jane", "PatientBirthDate": None,
        "ScheduledProcedureStepSequence": [{
            "ScheduledProcedureStepID": step["ScheduledProcedureStepID"],
            "ScheduledStationAETitle": "CT2"}]})
    assert patched.status_code == 200, patched.text
    changed = patched.json()
    assert changed["PatientName"] == "Doe^Jane" and changed["PatientBirthDate"] is None
    assert changed["ScheduledProcedureStepSequence"][0]["ScheduledStationAETitle"] == "CT2"
    assert changed["ScheduledProcedureStepSequence"][0]["Modality"] == "CT"

    cancelled = site.call("DELETE", f"/api/orders/{order['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert {s["ScheduledProcedureStepStatus"]
            for s in cancelled.json()["ScheduledProcedureStepSequence"]} == {"CANCELED"}
    again = site.call("DELETE", f"/api/orders/{order['id']}")
    assert again.status_code == 200 and again.json() == cancelled.json()  # idempotent
    refused = site.call("PATCH", f"/api/orders/{order['id']}", json={"PatientName": "X"})
    assert refused.status_code == 409 and "cancelled" in refused.json()["error"]

    audit = site.call("GET", "/api/audit", params={"study": order["StudyInstanceUID"]}).json()
    assert [(e["action"], e["actor"]) for e in audit] == [
        ("order-cancel", QA_ACTOR), ("order-update", QA_ACTOR), ("order-create", QA_ACTOR)]
    assert {e["detail"]["order_id"] for e in audit} == {order["id"]}
    assert {e["detail"]["accession_number"] for e in audit} == {"R-1"}


@pytest.mark.parametrize(("change", "named"), [
    ({"PatientBirthDate": "1970-01-01"}, "PatientBirthDate"),
    ({"PatientSex": "male"}, "PatientSex"),
    ({"AccessionNumber": "X" * 17}, "AccessionNumber"),
    ({"PatientName": "A\\B"}, "PatientName"),
    ({"StudyInstanceUID": "not.a.uid"}, "StudyInstanceUID"),
    ({"PatientID": 7}, "PatientID"),
    ({"Colour": "red"}, "Colour"),
    ({"ScheduledProcedureStepSequence": []}, "ScheduledProcedureStepSequence"),
    ({"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT1"}]}, "Modality"),
    ({"ScheduledProcedureStepSequence": [{"Modality": "CT", "Colour": "red"}]}, "Colour"),
    ({"ScheduledProcedureStepSequence": [{"Modality": "CT", "ScheduledStationAETitle": "CT1",
                                          "ScheduledProcedureStepStartTime": "9:30"}]},
     "ScheduledProcedureStepStartTime"),
])
def test_a_bad_value_is_400_naming_it_and_makes_nothing(
        site: Site, change: dict[str, Any], named: str) -> None:
    answer = site.call("POST", "/api/orders", json=new_order("R-BAD", **change))
    assert answer.status_code == 400, answer.text
    assert named in answer.json()["error"]
    assert site.call("GET", "/api/orders", params={"accession_number": "R-BAD"}).json() == []


def test_conflicts_are_409(site: Site) -> None:
    first = site.call("POST", "/api/orders", json=new_order("R-2"))
    assert first.status_code == 201, first.text
    same_accession = site.call("POST", "/api/orders", json=new_order("R-2"))
    assert same_accession.status_code == 409
    assert "AccessionNumber 'R-2'" in same_accession.json()["error"]
    same_study = site.call("POST", "/api/orders", json=new_order(
        "R-3", StudyInstanceUID=first.json()["StudyInstanceUID"]))
    assert same_study.status_code == 409 and "StudyInstanceUID" in same_study.json()["error"]
    assert site.call("GET", "/api/orders/987654").status_code == 404
    assert site.call("DELETE", "/api/orders/987654").status_code == 404


@pytest.mark.parametrize("who", ["viewer", "uploader"])
def test_roles_without_qa_are_refused(site: Site, who: str) -> None:
    for method, path, body in [("POST", "/api/orders", new_order("R-ROLE")),
                               ("GET", "/api/orders", None), ("GET", "/api/orders/1", None),
                               ("PATCH", "/api/orders/1", {"PatientName": "X"}),
                               ("DELETE", "/api/orders/1", None)]:
        answer = site.call(method, path, who=who, json=body)
        assert answer.status_code == 403, (method, path, answer.text)
    assert site.call("GET", "/api/orders", who=None).status_code == 401
    assert site.call("POST", "/api/orders", who=None, json=new_order("R-ROLE")).status_code == 401
    assert site.call("GET", "/api/orders", params={"accession_number": "R-ROLE"}).json() == []


def test_admin_may_and_a_cross_site_post_is_refused(site: Site) -> None:
    made = site.call("POST", "/api/orders", who="admin", json=new_order("R-ADMIN"))
    assert made.status_code == 201, made.text
    cross = site.call("POST", "/api/orders", json=new_order("R-CROSS"),
                      headers={"Sec-Fetch-Site": "cross-site",
                               "Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert site.call("GET", "/api/orders", params={"accession_number": "R-CROSS"}).json() == []


def test_an_oversized_body_is_413(site: Site) -> None:
    huge = new_order("R-HUGE", RequestedProcedureDescription="x" * (2 << 20))
    answer = site.call("POST", "/api/orders", json=huge)
    assert answer.status_code == 413
