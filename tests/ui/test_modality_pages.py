"""The modality side of the web UI in a real browser (Playwright, Debian's chromium) against a
running ``pacs serve``: the worklist page lists orders with their steps, states and linked
study; a study held for another patient than its order is corrected from the order in one
click; the study page shows its MPPS and the storage commitment of its instances."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.browser import ARTIFACTS, launched
from tests.support.nscu import (
    CT_IMAGE,
    MPPS,
    association,
    commitment_request,
    mpps_final,
    mpps_in_progress,
    request_commitment,
)
from tests.support.server import PacsServer
from tests.support.wait import until


@dataclass
class Site:
    server: PacsServer
    workdir: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.server.base_url}/api{path}", timeout=60, **kwargs)

    def order(self, accession: str, **changes: Any) -> dict[str, Any]:
        body = {"PatientID": "WL-1", "PatientName": "Worklist^Wanda", "PatientSex": "F",
                "AccessionNumber": accession, "RequestedProcedureDescription": "CT chest",
                "ScheduledProcedureStepSequence": [
                    {"ScheduledStationAETitle": "CT1", "Modality": "CT",
                     "ScheduledProcedureStepStartDate": "20261208",
                     "ScheduledProcedureStepStartTime": "0930",
                     "ScheduledProcedureStepDescription": "CT chest plain"}],
                **changes}
        made = self.api("POST", "/orders", json=body)
        assert made.status_code == 201, made.text
        return dict(made.json())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("modality-ui")
    server = PacsServer(data_dir=root / "data",
                        database_url=f"sqlite:///{root / 'index.sqlite'}").start()
    try:
        yield Site(server, root)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as started:
        yield started


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(base_url=site.server.base_url,
                                  viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        context.close()


def test_the_worklist_shows_orders_steps_and_the_linked_study_and_corrects_from_the_order(
        site: Site, page: Page) -> None:
    order = site.order("WL-ACC-1")
    site.order("WL-ACC-2", PatientID="WL-2", PatientName="Waiting^Walt")
    ds = ct_instance(PatientID="WL-WRONG", PatientName="Wrong^Will", PatientSex="M",
                     AccessionNumber="WL-ACC-1")
    dcmtk.store_datasets(site.server.dimse_port, [ds], workdir=site.workdir)
    study = str(ds.StudyInstanceUID)

    page.goto("/ui/worklist")
    row = page.locator(f'tr[data-order="{order["id"]}"]')
    expect(row).to_contain_text("Worklist^Wanda")
    expect(row.locator(".steps li")).to_contain_text("CT1")
    expect(row.locator(".steps li")).to_contain_text("SCHEDULED")
    expect(row.locator("td").last.locator(".badge")).to_have_text("quarantined")
    waiting = page.locator("tr[data-order]").filter(has_text="Waiting^Walt")
    expect(waiting).to_contain_text("not arrived")
    page.locator("#patient").fill("WL-2")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tr[data-order]")).to_have_count(1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto("/ui/worklist")
    page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)

    row = page.locator(f'tr[data-order="{order["id"]}"]')
    row.get_by_role("link").click()
    expect(page.locator("tr.finding").filter(has_text="order-mismatch")).to_be_visible()
    page.get_by_role("button", name="Correct from order").click()
    expect(page.locator("main .notice").first).to_contain_text("from its order")
    expect(page.locator("dl.attributes")).to_contain_text("Worklist^Wanda")
    page.get_by_role("button", name="Accept").click()

    shown = site.api("GET", f"/studies/{study}").json()
    assert (shown["state"], shown["patient_id"], shown["patient_name"]) == (
        "archived", "WL-1", "Worklist^Wanda")


def test_the_study_page_shows_its_mpps_and_storage_commitment(site: Site, page: Page) -> None:
    study = make_uid("modality-ui", "study")
    series = make_uid("modality-ui", "series")
    images = [ct_instance(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=n,
                          PatientID="WL-3") for n in (1, 2)]
    dcmtk.store_datasets(site.server.dimse_port, images, workdir=site.workdir / "mpps")
    pps = make_uid("modality-ui", "pps")
    with association(site.server.dimse_port, "CT1", MPPS) as assoc:
        status, _ = assoc.send_n_create(mpps_in_progress(study_instance_uid=study), MPPS, pps)
        assert int(status.Status) == 0
        status, _ = assoc.send_n_set(
            mpps_final("COMPLETED", {series: [str(ds.SOPInstanceUID) for ds in images]}),
            MPPS, pps)
        assert int(status.Status) == 0
    transaction = make_uid("modality-ui", "commit")
    answered, _ = request_commitment(  # (the report's ways are tested in tests/dimse)
        site.server.dimse_port, "WS1",
        commitment_request([(CT_IMAGE, str(ds.SOPInstanceUID)) for ds in images], transaction),
        wait_for_report=False)
    assert answered == 0
    until("the commitment is checked", lambda: all(
        c["failure_reason"] is None and c["committed"]
        for c in site.api("GET", f"/studies/{study}/commitments").json()) and len(
        site.api("GET", f"/studies/{study}/commitments").json()) == 2)

    page.goto(f"/ui/studies/{study}")
    mpps_row = page.locator("table.mpps tbody tr")
    expect(mpps_row).to_have_count(1)
    expect(mpps_row).to_contain_text("COMPLETED")
    expect(mpps_row).to_contain_text("2 of 2")
    expect(mpps_row).to_contain_text(pps)
    committed = page.locator("table.commitments tbody tr")
    expect(committed).to_have_count(2)
    for i in range(2):
        expect(committed.nth(i)).to_contain_text("committed")
        expect(committed.nth(i)).to_contain_text(transaction)
    page.screenshot(path=str(ARTIFACTS / "study-modality.png"), full_page=True)
