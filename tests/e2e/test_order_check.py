"""The QA gate's worklist check against a real ``pacs serve`` (SQLite and PostgreSQL): a study
whose Accession Number or Study Instance UID names an order of the worklist but whose patient
differs is quarantined with an ``order-mismatch`` finding; one action corrects it from the
order; a study of the ordered patient passes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import datasets as f
from tests.support.dcmtk import store_datasets
from tests.support.server import PacsServer, bearer, token


@dataclass
class Site:
    server: PacsServer
    qa: str
    workdir: Path

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.server.base_url}{path}", headers=bearer(self.qa),
                             timeout=60, **kwargs)

    def order(self, accession: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "PatientID": "ORD-1", "PatientName": "Order^Olga", "PatientBirthDate": "19600202",
            "PatientSex": "F", "AccessionNumber": accession,
            "ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT1",
                                                "Modality": "CT"}],
            **changes}
        made = self.call("POST", "/api/orders", json=body)
        assert made.status_code == 201, made.text
        return dict(made.json())

    def study(self, uid: str) -> dict[str, Any]:
        found = self.call("GET", f"/api/studies/{uid}")
        assert found.status_code == 200, found.text
        return dict(found.json())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("order-check")
    server = PacsServer(data_dir=root / "data", database_url=module_database_url,
                        extra_args=["--auth", "required"])
    qa = token(server, "qa", "qa")
    server.start()
    try:
        yield Site(server, qa, root)
    finally:
        server.stop()


def _codes(study: dict[str, Any]) -> list[str]:
    return [finding["code"] for finding in study["findings"]]


def test_a_study_of_another_patient_than_its_order_is_held_and_corrected_from_it(
        site: Site) -> None:
    order = site.order("ACC-MISMATCH")
    ds = f.ct_instance(PatientID="WRONG-7", PatientName="Wrong^Walter", PatientSex="M",
                       PatientBirthDate="19600202", AccessionNumber="ACC-MISMATCH")
    store_datasets(site.server.dimse_port, [ds], workdir=site.workdir)
    uid = str(ds.StudyInstanceUID)

    held = site.study(uid)
    [finding] = [x for x in held["findings"] if x["code"] == "order-mismatch"]
    corrected = site.call("POST", f"/api/studies/{uid}/correct-from-order")
    assert corrected.status_code == 200, corrected.text
    after = corrected.json()
    accepted = site.call("POST", f"/api/studies/{uid}/accept")

    assert held["state"] == "quarantined"
    assert f"order {order['id']}" in finding["message"]
    assert "PatientID 'WRONG-7' (ordered: 'ORD-1')" in finding["message"]
    assert "PatientName" in finding["message"] and "PatientSex" in finding["message"]
    assert "PatientBirthDate" not in finding["message"]  # the same on both sides
    assert "order-mismatch" not in _codes(after)
    assert (after["patient_id"], after["patient_name"], after["patient_sex"]) == (
        "ORD-1", "Order^Olga", "F")
    assert accepted.status_code == 200 and accepted.json()["state"] == "archived"
    qido = site.call("GET", "/dicom-web/studies", params={"StudyInstanceUID": uid})
    assert qido.json()[0]["00100020"]["Value"] == ["ORD-1"]


def test_the_order_is_found_by_study_instance_uid_too(site: Site) -> None:
    ds = f.ct_instance(PatientID="WRONG-8", PatientName="Other^Otto", AccessionNumber="")
    site.order("ACC-BY-UID", StudyInstanceUID=str(ds.StudyInstanceUID))
    store_datasets(site.server.dimse_port, [ds], workdir=site.workdir)

    held = site.study(str(ds.StudyInstanceUID))

    assert held["state"] == "quarantined" and "order-mismatch" in _codes(held)


def test_a_study_of_the_ordered_patient_passes(site: Site) -> None:
    site.order("ACC-MATCH", PatientName="ORDER^OLGA")  # names compare as PN matching does
    ds = f.ct_instance(PatientID="ORD-1", PatientName="order^olga", PatientSex="F",
                       PatientBirthDate="19600202", AccessionNumber="ACC-MATCH")
    store_datasets(site.server.dimse_port, [ds], workdir=site.workdir)

    study = site.study(str(ds.StudyInstanceUID))

    assert study["state"] == "archived" and _codes(study) == []


def test_a_cancelled_order_checks_nothing_and_correcting_without_an_order_is_404(
        site: Site) -> None:
    order = site.order("ACC-CANCELLED")
    assert site.call("DELETE", f"/api/orders/{order['id']}").status_code == 200
    ds = f.ct_instance(PatientID="SOMEONE", AccessionNumber="ACC-CANCELLED")
    store_datasets(site.server.dimse_port, [ds], workdir=site.workdir)
    uid = str(ds.StudyInstanceUID)

    study = site.study(uid)
    refused = site.call("POST", f"/api/studies/{uid}/correct-from-order")

    assert study["state"] == "archived" and _codes(study) == []
    assert refused.status_code == 404 and "no open order" in refused.json()["error"]
