"""Signing in to the web UI with ``--auth required``, in headless Chromium against a real
``pacs serve``: the sign-in page, the session cookie's flags, who is signed in, actions
hidden from a role that lacks them, a qa reviewer's accept, a form without its CSRF token
refused, sign-out, and a revoked token ending its sessions."""

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
from tests.support.pki import make_server_pki
from tests.support.server import PacsServer, bearer, token

ARCHIVED = make_uid("sign-in", "archived")


@dataclass
class Site:
    server: PacsServer
    tokens: dict[str, str]
    workdir: Path

    def held(self, tag: str) -> str:
        """A new study waiting for review (the server runs --qa manual)."""
        study = make_uid("sign-in", tag)
        dcmtk.store_datasets(self.server.dimse_port, [ct_instance(
            PatientID=f"SIGN-{tag}", PatientName=f"Held^{tag}", StudyInstanceUID=study)],
            workdir=self.workdir)
        return study

    def state(self, study: str) -> str:
        answer = httpx.get(f"{self.server.base_url}/api/studies/{study}",
                           headers=bearer(self.tokens["admin"]), timeout=30)
        assert answer.status_code == 200, answer.text
        found: str = answer.json()["state"]
        return found

    def audit(self, action: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.server.base_url}/api/audit", params={"action": action},
                           headers=bearer(self.tokens["admin"]), timeout=30)
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("sign-in")
    server = PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
                        extra_args=["--auth", "required", "--qa", "manual",
                                    "--dimse-processes", "1"])
    tokens = {role: token(server, role, role) for role in ("viewer", "qa", "admin")}
    tokens["short-lived"] = token(server, "short-lived", "qa")
    server.start()
    site = Site(server, tokens, root)
    try:
        dcmtk.store_datasets(server.dimse_port, [ct_instance(
            PatientID="SIGN-A", PatientName="Archived^Ann", StudyInstanceUID=ARCHIVED)],
            workdir=root)
        accepted = httpx.post(f"{server.base_url}/api/studies/{ARCHIVED}/accept",
                              headers=bearer(tokens["qa"]), timeout=30)
        assert accepted.status_code == 200, accepted.text
        yield site
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as started:
        yield started


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(base_url=site.server.base_url,
                                  viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        context.close()


def sign_in(page: Page, secret: str, start: str = "/ui/studies") -> None:
    page.goto(start)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_label("API token").fill(secret)
    page.get_by_role("button", name="Sign in").click()


def test_signing_in_sets_a_strict_http_only_session_cookie(site: Site, page: Page) -> None:
    sign_in(page, site.tokens["viewer"], start=f"/ui/studies/{ARCHIVED}")

    expect(page.get_by_role("heading", level=1)).to_contain_text("Archived^Ann")  # next=
    expect(page.locator("#signed-in-as")).to_contain_text("Signed in as viewer")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "pacs_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP here; see the HTTPS test below
    assert cookie["path"] == "/"
    assert cookie["expires"] == -1  # a browser-session cookie
    assert cookie["value"] not in site.server.log()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "signed-in-viewer.png"), full_page=True)
    # the study page's thumbnails come from DICOMweb, with the same cookie
    thumbnail = page.locator("ul.thumbnails img").first
    expect(thumbnail).to_be_visible()
    assert page.evaluate("img => img.naturalWidth", thumbnail.element_handle()) > 0


def test_a_viewer_sees_no_review_actions_and_no_review_pages(site: Site, page: Page) -> None:
    held = site.held("viewer")
    sign_in(page, site.tokens["viewer"], start=f"/ui/studies/{ARCHIVED}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Archived^Ann")
    for button in ("Accept", "Reject", "Save correction"):
        expect(page.get_by_role("button", name=button)).to_have_count(0)
    expect(page.get_by_text("Correct patient and study attributes")).to_have_count(0)
    navigation = page.get_by_role("navigation", name="Main")
    expect(navigation.get_by_role("link")).to_have_text(["Studies"])
    expect(page.get_by_role("heading", name="History")).to_have_count(0)

    page.goto("/ui/studies")
    expect(page.locator(f'tr[data-study="{ARCHIVED}"]')).to_be_visible()
    expect(page.locator(f'tr[data-study="{held}"]')).to_have_count(0)  # not archived
    expect(page.get_by_label("State")).to_have_count(0)
    answer = page.goto(f"/ui/studies/{held}")
    assert answer is not None and answer.status == 404
    answer = page.goto("/ui/qa")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("heading", level=1)).to_contain_text("Forbidden")
    expect(page.get_by_role("alert")).to_contain_text("this needs the qa role")


def test_a_qa_reviewer_accepts_from_the_queue(site: Site, page: Page) -> None:
    held = site.held("qa")
    sign_in(page, site.tokens["qa"], start="/ui/qa")
    expect(page.locator("#signed-in-as")).to_contain_text("Signed in as qa")
    navigation = page.get_by_role("navigation", name="Main")
    expect(navigation.get_by_role("link")).to_have_text(
        ["Studies", "QA queue", "Worklist", "Audit"])
    page.locator(f'article[data-study="{held}"]').get_by_role("button", name="Accept").click()
    expect(page.locator("main .notice").first).to_contain_text("Accepted")
    assert site.state(held) == "archived"
    accepts = [e for e in site.audit("accept") if e["study_instance_uid"] == held]
    assert [e["actor"] for e in accepts] == ["http:token:qa@127.0.0.1"]


def test_a_form_without_its_csrf_token_is_refused(site: Site, page: Page) -> None:
    held = site.held("csrf")
    sign_in(page, site.tokens["qa"], start="/ui/qa")
    card = page.locator(f'article[data-study="{held}"]')
    expect(card).to_be_visible()
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    with page.expect_response(lambda r: r.url.endswith(f"/{held}/accept")) as posted:
        card.get_by_role("button", name="Accept").click()
    assert posted.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("out of date")
    assert site.state(held) == "quarantined"

    forged = page.context.request.post(f"/ui/studies/{held}/accept",
                                       form={"csrf": "0" * 64}, max_redirects=0)
    assert forged.status == 403
    assert site.state(held) == "quarantined"


def test_signing_out_ends_the_session(site: Site, page: Page) -> None:
    sign_in(page, site.tokens["qa"])
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "pacs_session"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    assert not [c for c in page.context.cookies() if c["name"] == "pacs_session"]
    stale = httpx.get(f"{site.server.base_url}/ui/qa", cookies={"pacs_session": cookie["value"]},
                      timeout=30)
    assert stale.status_code == 303  # the session is gone from the index, not only the browser
    assert stale.headers["location"].startswith("/ui/sign-in")
    assert any(e["actor"] == "http:token:qa@127.0.0.1" for e in site.audit("sign-out"))


def test_a_bad_token_is_refused_and_audited(site: Site, page: Page) -> None:
    sign_in(page, "pacs_000000000000_wrongwrongwrongwrongwrongwrongwrongwrongwro")
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    assert not [c for c in page.context.cookies() if c["name"] == "pacs_session"]


def test_revoking_the_token_ends_its_sessions(site: Site, page: Page) -> None:
    sign_in(page, site.tokens["short-lived"], start="/ui/qa")
    expect(page.locator("#signed-in-as")).to_contain_text("short-lived")
    assert site.server.cli("token", "revoke", "short-lived").returncode == 0
    page.goto("/ui/qa")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")


def test_the_session_cookie_is_secure_under_https(tmp_path: Path) -> None:
    pki = make_server_pki(tmp_path / "pki")
    server = PacsServer(data_dir=tmp_path / "data",
                        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
                        extra_args=["--auth", "required", "--dimse-processes", "1",
                                    "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)],
                        tls_ca=pki.ca)
    secret = token(server, "viewer", "viewer")
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, verify=server.verify, timeout=30) as http:
            form = http.get("/ui/sign-in")
            assert "secure" in form.headers["set-cookie"].lower()
            csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
            signed = http.post("/ui/sign-in", data={"token": secret, "csrf": csrf})
            assert signed.status_code == 303, signed.text
            flags = [part.strip().lower() for part in signed.headers.get_list("set-cookie")
                     [0].split(";")]
            assert flags[0].startswith("pacs_session=")
            assert {"httponly", "secure", "samesite=strict", "path=/"} <= set(flags)
            assert http.get("/ui/studies").status_code == 200
    finally:
        server.stop()
