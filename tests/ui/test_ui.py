"""The QA web UI in a real browser: Playwright drives Debian's chromium against a running
``pacs serve`` that storescu filled. Search, the QA queue with its findings, accept / correct /
reject from the pages (seen afterwards through QIDO-RS and /api), readable service errors,
routing jobs with Retry, the audit trail, keyboard use. A screenshot of each page is saved under
``tests/artifacts/`` (git-ignored)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from pydicom.dataset import Dataset

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.browser import ARTIFACTS, launched
from tests.support.server import PacsServer, free_port
from tests.support.wait import until


@dataclass
class Site:
    server: PacsServer
    workdir: Path
    http: httpx.Client

    def store(self, *datasets: Dataset) -> None:
        dcmtk.store_datasets(self.server.dimse_port, datasets, workdir=self.workdir)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, f"{self.server.base_url}/api{path}", **kwargs)

    def review(self, study: str) -> dict[str, Any]:
        answer = self.api("GET", f"/studies/{study}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def qido(self, study: str) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.server.base_url}/dicom-web/studies",
                               params={"StudyInstanceUID": study})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found

    def quarantined(self, tag: str) -> str:
        """A study held for a patient mismatch: its PatientID is archived as Doe^Jane, it
        says Smith^Wrong."""
        patient = f"UI-{tag}"
        self.store(ct_instance(PatientID=patient, PatientName="Doe^Jane",
                               PatientBirthDate="19800202",
                               StudyInstanceUID=make_uid("ui", tag, "archived")))
        study = make_uid("ui", tag, "held")
        self.store(*(ct_instance(PatientID=patient, PatientName="Smith^Wrong",
                                 PatientBirthDate="19800202", StudyInstanceUID=study,
                                 InstanceNumber=n) for n in (1, 2)))
        assert self.review(study)["state"] == "quarantined"
        return study


def _name(item: dict[str, Any]) -> str:
    return str(item["00100010"]["Value"][0]["Alphabetic"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One server for the module, on SQLite; archived studies are routed to a peer that is
    down, so routing jobs fail (and can be retried)."""
    root = tmp_path_factory.mktemp("ui")
    server = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
        extra_args=["--peer", f"DOWN=127.0.0.1:{free_port()}", "--route", "*=DOWN",
                    "--stable-seconds", "0.5"],
    ).start()
    try:
        with httpx.Client(timeout=60) as http:
            yield Site(server, root, http)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as started:
        yield started


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    """A page of the UI; a test fails if the Content-Security-Policy blocked anything."""
    context = browser.new_context(base_url=site.server.base_url,
                                  viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    violations: list[str] = []
    opened.on("console", lambda message: violations.append(message.text)
              if "Content Security Policy" in message.text else None)
    try:
        yield opened
    finally:
        context.close()
    assert violations == []


def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def _listed(page: Page) -> set[str]:
    rows = page.locator("table.studies tbody tr")
    return {str(rows.nth(i).get_attribute("data-study")) for i in range(rows.count())}


def _card(page: Page, study: str) -> Locator:
    return page.locator(f'article[data-study="{study}"]')


def _notice(page: Page) -> Locator:
    return page.locator("main .notice").first


def test_search_by_patient_name_id_and_date(site: Site, page: Page) -> None:
    alice, bob = make_uid("ui", "search", "alice"), make_uid("ui", "search", "bob")
    site.store(ct_instance(PatientID="UI-S-ALICE", PatientName="Searchable^Alice",
                           StudyInstanceUID=alice, StudyDate="20230301",
                           StudyDescription="CT HEAD"),
               ct_instance(PatientID="UI-S-BOB", PatientName="Other^Bob",
                           StudyInstanceUID=bob, StudyDate="20240115"))

    page.goto("/")
    assert page.url.endswith("/ui/studies")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Studies")
           ).to_have_attribute("aria-current", "page")

    page.get_by_label("Patient name").fill("searchABLE")  # substring, any case
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.studies caption")).to_contain_text("1 study")
    assert _listed(page) == {alice}
    row = page.locator(f'tr[data-study="{alice}"]')
    for text in ("Searchable^Alice", "UI-S-ALICE", "2023-03-01", "CT HEAD", "CT", "archived"):
        expect(row).to_contain_text(text)
    _screenshot(page, "studies")

    page.get_by_label("Patient name").fill("")
    page.get_by_label("Patient ID").fill("UI-S-B")  # a prefix
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.studies caption")).to_contain_text("1 study")
    assert _listed(page) == {bob}

    page.get_by_label("Patient ID").fill("UI-S-")
    page.get_by_label("Study date to").fill("2023-12-31")
    page.get_by_label("State").select_option("archived")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.studies caption")).to_contain_text("1 study")
    assert _listed(page) == {alice}

    page.get_by_label("Study date to").fill("")
    page.get_by_label("Patient ID").fill("UI-S-NOBODY")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No study matches.")).to_be_visible()

    page.get_by_label("Patient ID").fill("UI-S-ALICE")
    page.get_by_role("button", name="Search").click()
    page.locator(f'tr[data-study="{alice}"]').get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Searchable^Alice")


def test_the_qa_queue_shows_a_quarantined_study_with_its_findings(
    site: Site, page: Page
) -> None:
    study = site.quarantined("queue")
    page.goto("/ui/qa")
    card = _card(page, study)
    expect(card).to_be_visible()
    finding = card.locator("tr.finding").filter(
        has=page.get_by_text("patient-mismatch", exact=True))
    expect(finding).to_contain_text("error")
    expect(finding).to_contain_text("Smith^Wrong")
    expect(card.get_by_role("button", name="Accept")).to_be_visible()
    expect(card.get_by_label("Reason for rejection")).to_be_visible()
    card.get_by_text("Correct patient and study attributes").click()
    expect(card.get_by_label("PatientID")).to_have_value("UI-queue")
    expect(card.get_by_label("PatientBirthDate")).to_have_value("19800202")
    _screenshot(page, "qa")


def test_accept_from_the_queue_makes_the_study_visible_in_qido(site: Site, page: Page) -> None:
    study = site.quarantined("accept")
    assert site.qido(study) == []
    page.goto("/ui/qa")
    _card(page, study).get_by_role("button", name="Accept").click()
    expect(_notice(page)).to_contain_text("Accepted")
    expect(_card(page, study)).to_have_count(0)
    assert "/ui/qa" in page.url
    assert site.review(study)["state"] == "archived"
    assert len(site.qido(study)) == 1
    actions = {(e["action"], e["actor"]) for e in
               site.api("GET", "/audit", params={"study": study}).json()}
    assert ("accept", "http:127.0.0.1") in actions


def test_pages_carry_a_security_policy_that_lets_them_work(site: Site, page: Page) -> None:
    """No inline script, nothing from elsewhere, no framing: the page, its script (which
    focuses the notice after an action), its style and the thumbnails still work."""
    study = site.quarantined("csp")
    answer = page.goto("/ui/qa")
    assert answer is not None
    headers = answer.headers
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert page.locator("script:not([src])").count() == 0
    _card(page, study).get_by_role("button", name="Accept").click()
    expect(_notice(page)).to_contain_text("Accepted")
    expect(_notice(page)).to_be_focused()  # ui.js ran
    assert page.evaluate("getComputedStyle(document.querySelector('.skip-link')).position"
                         ) == "absolute"  # ui.css applied
    page.goto(f"/ui/studies/{study}")
    thumbnail = page.locator("img").first
    expect(thumbnail).to_be_visible()
    until("the thumbnail is drawn", lambda: page.evaluate(
        "img => img.complete && img.naturalWidth > 0", thumbnail.element_handle()))


def test_the_accept_button_works_from_the_keyboard(site: Site, page: Page) -> None:
    study = site.quarantined("keyboard")
    page.goto("/ui/qa")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent.trim()")
    assert focused == "Skip to main content"  # the first stop is the skip link
    for _ in range(500):
        page.keyboard.press("Tab")
        here = page.evaluate("""() => {
            const el = document.activeElement;
            const card = el.closest("article");
            return [el.tagName, el.textContent.trim(), card ? card.dataset.study : null];
        }""")
        if here == ["BUTTON", "Accept", study]:
            break
    else:
        raise AssertionError("the Accept button of the study is not reachable with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    page.keyboard.press("Enter")
    expect(_notice(page)).to_contain_text("Accepted")
    assert site.review(study)["state"] == "archived"


def test_a_correction_from_the_form_renames_the_study(site: Site, page: Page) -> None:
    study = make_uid("ui", "correct")
    site.store(*(ct_instance(PatientID="UI-C1", PatientName="", StudyInstanceUID=study,
                             SeriesNumber=s, InstanceNumber=1) for s in (1, 2)))
    assert site.review(study)["state"] == "quarantined"

    page.goto(f"/ui/studies/{study}")
    expect(page.locator("tr.finding").filter(has_text="PatientName").first).to_be_visible()
    expect(page.get_by_text("No thumbnails")).to_be_visible()  # not archived: invisible
    page.get_by_text("Correct patient and study attributes").click()
    expect(page.get_by_label("PatientID")).to_have_value("UI-C1")
    page.get_by_label("PatientName").fill("Fixed^Name")
    page.get_by_role("button", name="Save correction").click()
    expect(_notice(page)).to_contain_text("Corrected Fixed^Name")
    expect(page.get_by_text("No open findings.")).to_be_visible()
    assert site.qido(study) == []  # corrected, still waiting for the reviewer

    page.get_by_role("button", name="Accept").click()
    expect(_notice(page)).to_contain_text("Accepted")
    assert [_name(item) for item in site.qido(study)] == ["Fixed^Name"]
    expect(page.locator(".meta .badge")).to_have_text("archived")
    history = page.locator("table.audit")
    for action in ("store", "quarantine", "correct", "accept"):
        expect(history.get_by_role("cell", name=action, exact=True).first).to_be_visible()
    thumbnails = page.locator(".thumbnails img")
    expect(thumbnails).to_have_count(2)
    for i in range(2):  # the WADO-RS thumbnails load (decoded JPEGs)
        thumbnails.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=thumbnails.nth(i).element_handle())
    _screenshot(page, "study")


def test_saving_the_prefilled_form_writes_the_archived_patient_into_the_files(
    site: Site, page: Page
) -> None:
    study = site.quarantined("refile")
    page.goto("/ui/qa")
    card = _card(page, study)
    card.get_by_text("Correct patient and study attributes").click()
    expect(card.get_by_label("PatientName")).to_have_value("Doe^Jane")  # the archive's
    card.get_by_role("button", name="Save correction").click()
    expect(_notice(page)).to_contain_text("0 open findings")
    _card(page, study).get_by_role("button", name="Accept").click()
    expect(_notice(page)).to_contain_text("Accepted")

    metadata = site.http.get(f"{site.server.base_url}/dicom-web/studies/{study}/metadata")
    assert metadata.status_code == 200
    assert {_name(item) for item in metadata.json()} == {"Doe^Jane"}  # in the files now
    correction = next(e for e in site.api("GET", "/audit", params={"study": study}).json()
                      if e["action"] == "correct")
    assert correction["detail"]["changes"]["PatientName"] == {"old": "Smith^Wrong",
                                                              "new": "Doe^Jane"}


def test_rejecting_with_a_reason(site: Site, page: Page) -> None:
    study = site.quarantined("reject")
    page.goto("/ui/qa")
    card = _card(page, study)
    card.get_by_role("button", name="Reject").click()  # no reason: the browser refuses
    assert card.get_by_label("Reason for rejection").evaluate("el => el.validity.valueMissing")
    card.get_by_label("Reason for rejection").fill("wrong patient (UI test)")
    card.get_by_role("button", name="Reject").click()
    expect(_notice(page)).to_contain_text("Rejected")
    review = site.review(study)
    assert review["state"] == "rejected"
    assert review["rejection_reason"] == "wrong patient (UI test)"

    page.goto(f"/ui/studies/{study}")
    expect(page.locator(".reason")).to_have_text("wrong patient (UI test)")
    expect(page.get_by_role("button", name="Accept")).to_have_count(0)  # not allowed now


def test_service_errors_are_readable_pages(site: Site, page: Page) -> None:
    study = site.quarantined("stale")
    page.goto("/ui/qa")
    card = _card(page, study)
    expect(card).to_be_visible()
    assert site.api("POST", f"/studies/{study}/accept").status_code == 200  # someone else
    card.get_by_role("button", name="Accept").click()  # on the stale page: 409
    expect(page.get_by_role("alert")).to_contain_text("cannot accept a study that is archived")

    missing = page.goto(f"/ui/studies/{make_uid('ui', 'nobody')}")
    assert missing is not None and missing.status == 404
    expect(page.get_by_role("alert")).to_contain_text("no study")
    malformed = page.goto("/ui/studies?date_from=2024")
    assert malformed is not None and malformed.status == 400
    expect(page.get_by_role("alert")).to_contain_text("YYYYMMDD")
    answer = site.http.post(f"{site.server.base_url}/ui/studies/{study}/reject",
                            data={"reason": "  ", "next": "https://example.org/"})
    assert answer.status_code == 303  # back to this site only, with the 400's message
    assert answer.headers["location"].startswith(f"/ui/studies/{study}?error=")


def test_jobs_page_lists_failed_jobs_and_retries_one(site: Site, page: Page) -> None:
    study = make_uid("ui", "route")
    site.store(ct_instance(PatientID="UI-J1", PatientName="Route^Me", StudyInstanceUID=study))

    def failed() -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = site.api("GET", "/jobs", params={"study": study}).json()
        return [j for j in jobs if j["state"] == "failed"]

    job = until("a failed routing job", failed)[0]
    page.goto("/ui/jobs")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Jobs")).to_have_attribute("aria-current", "page")
    row = page.locator(f'tr[data-job="{job["id"]}"]')
    expect(row).to_contain_text("DOWN")
    expect(row).to_contain_text("failed")
    expect(row.locator("td").nth(6)).not_to_be_empty()  # the last error
    _screenshot(page, "jobs")
    row.get_by_role("button", name=f"Retry job {job['id']}").click()
    expect(_notice(page)).to_contain_text(f"Job {job['id']} to DOWN will run again")
    outcomes = [e["outcome"] for e in
                site.api("GET", "/audit", params={"study": study, "action": "route"}).json()]
    assert "retry requested" in outcomes


def test_audit_page_filters_by_study(site: Site, page: Page) -> None:
    study = make_uid("ui", "audit")
    site.store(ct_instance(PatientID="UI-A1", PatientName="Audit^Me", StudyInstanceUID=study))
    page.goto("/ui/audit")
    rows = page.locator("table.audit tbody tr")
    expect(rows.first).to_be_visible()
    page.get_by_label("Study Instance UID").fill(study)
    page.get_by_role("button", name="Filter").click()
    expect(rows.filter(has_text="store").first).to_be_visible()
    links = page.locator("table.audit tbody td.uid a")
    assert {links.nth(i).inner_text() for i in range(links.count())} == {study}
    expect(rows.filter(has_text="dimse:STORESCU@127.0.0.1").first).to_be_visible()
    _screenshot(page, "audit")
