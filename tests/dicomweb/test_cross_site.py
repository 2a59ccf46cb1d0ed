"""Cross-site requests against a real ``pacs serve`` (``--qa manual``): a state-changing
request a browser sends from another site's page is refused with 403 and changes nothing;
pages of the server itself, configured viewer origins (DICOMweb only) and non-browser clients
pass. First with httpx sending the headers a browser would, then with Chromium and a page
served from another origin (another port on 127.0.0.1: the same *site*, another *origin*)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.factories.datasets import ct_instance, make_uid, to_part10_bytes
from tests.support import dcmtk
from tests.support.browser import launched
from tests.support.server import PacsServer, free_port
from tests.support.wait import until

VIEWER = "http://viewer.example:3000"
ATTACKER = "http://attacker.example"


@dataclass
class Archive:
    server: PacsServer
    workdir: Path
    http: httpx.Client

    @property
    def base(self) -> str:
        return self.server.base_url

    def quarantined(self, tag: str) -> str:
        study = make_uid("cross-site", tag)
        dcmtk.store_datasets(self.server.dimse_port,
                             [ct_instance(PatientID=f"XS-{study[-16:]}", StudyInstanceUID=study)],
                             workdir=self.workdir)
        assert self.state(study) == "quarantined"
        return study

    def archived(self, tag: str) -> str:
        study = self.quarantined(tag)
        assert self.http.post(f"{self.base}/api/studies/{study}/accept").status_code == 200
        return study

    def state(self, study: str) -> str:
        answer = self.http.get(f"{self.base}/api/studies/{study}")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["state"])

    def qido(self, study: str) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.base}/dicom-web/studies",
                               params={"StudyInstanceUID": study})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found

    def refusals(self, path: str) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.base}/api/audit", params={"action": "http-refused"})
        return [row for row in answer.json() if row["detail"].get("path") == path]


@contextmanager
def _archive(root: Path, *args: str) -> Iterator[Archive]:
    server = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
        extra_args=["--qa", "manual", "--dimse-processes", "1", *args],
    ).start()
    try:
        with httpx.Client(timeout=60) as http:
            yield Archive(server, root, http)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """A server with the default settings: no CORS origin configured."""
    with _archive(tmp_path_factory.mktemp("cross-site")) as started:
        yield started


@pytest.fixture
def viewer_archive(tmp_path: Path) -> Iterator[Archive]:
    """A server that lets the viewer at :data:`VIEWER` use DICOMweb."""
    with _archive(tmp_path, "--cors-origins", VIEWER) as started:
        yield started


def _stow_body(study: str) -> tuple[bytes, str]:
    data = to_part10_bytes(ct_instance(PatientID="XS-STOW", StudyInstanceUID=study))
    body = (b"--xs\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--xs--\r\n")
    return body, 'multipart/related; type="application/dicom"; boundary=xs'


# -- the rule, with the headers browsers send ---------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Origin": ATTACKER},
    {"Origin": "null"},  # a sandboxed frame, a data: URL
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of the same host
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"},
], ids=["attacker", "null", "cross-site", "same-site", "cross-site-forged"])
def test_api_and_ui_actions_from_another_site_change_nothing(
    archive: Archive, headers: dict[str, str],
) -> None:
    study = archive.quarantined(f"api-{sorted(headers.items())}")
    for method, path, kwargs in (
        ("POST", f"/api/studies/{study}/accept", {}),
        ("POST", f"/api/studies/{study}/reject", {"json": {"reason": "csrf"}}),
        ("PATCH", f"/api/studies/{study}", {"json": {"PatientName": "CSRF^X"}}),
        ("POST", f"/ui/studies/{study}/accept", {"data": {"next": "/ui/qa"}}),
        ("POST", f"/ui/studies/{study}/correct", {"data": {"PatientName": "CSRF^Y"}}),
        ("POST", "/api/jobs/1/retry", {}),
    ):
        answer = archive.http.request(method, f"{archive.base}{path}", headers=headers,
                                      **kwargs)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["error"].startswith("cross-site request refused")
    review = archive.http.get(f"{archive.base}/api/studies/{study}").json()
    assert review["state"] == "quarantined"
    assert review["patient_name"] != "CSRF^X"


def test_dicomweb_changes_from_another_site_are_refused(archive: Archive) -> None:
    study = archive.archived("reject")
    new_study = make_uid("cross-site", "stow")
    body, content_type = _stow_body(new_study)
    for headers in ({"Origin": ATTACKER}, {"Sec-Fetch-Site": "same-site"}):
        rejected = archive.http.post(
            f"{archive.base}/dicom-web/studies/{study}/reject/113001%5EDCM", headers=headers)
        assert rejected.status_code == 403
        stored = archive.http.post(f"{archive.base}/dicom-web/studies", content=body,
                                   headers={**headers, "Content-Type": content_type})
        assert stored.status_code == 403
    assert archive.state(study) == "archived"
    assert len(archive.qido(study)) == 1
    assert archive.qido(new_study) == []


def test_own_pages_and_tools_pass(archive: Archive) -> None:
    own = archive.base  # http://127.0.0.1:PORT, as the Host header says
    for headers in ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {"Origin": own},
                    {"Sec-Fetch-Site": "none"}, {}):
        study = archive.quarantined(f"own-{sorted(headers.items())}")
        answer = archive.http.post(f"{own}/api/studies/{study}/accept", headers=headers)
        assert answer.status_code == 200, (headers, answer.text)
        assert archive.state(study) == "archived"


def test_a_configured_viewer_may_change_dicomweb_only(viewer_archive: Archive) -> None:
    """The viewer uploads (STOW-RS) and rejects through DICOMweb; the QA API is not its."""
    archive = viewer_archive
    stowed = make_uid("cross-site", "viewer-stow")
    body, content_type = _stow_body(stowed)
    answer = archive.http.post(f"{archive.base}/dicom-web/studies", content=body, headers={
        "Origin": VIEWER, "Sec-Fetch-Site": "cross-site", "Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == VIEWER
    study = archive.archived("viewer-reject")
    answer = archive.http.post(
        f"{archive.base}/dicom-web/studies/{study}/reject/113001%5EDCM",
        headers={"Origin": VIEWER, "Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 200, answer.text
    assert archive.state(study) == "rejected"

    held = archive.quarantined("viewer-accept")
    answer = archive.http.post(f"{archive.base}/api/studies/{held}/accept",
                               headers={"Origin": VIEWER, "Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 403
    assert "access-control-allow-origin" not in answer.headers
    assert archive.state(held) == "quarantined"


def test_refused_requests_are_in_the_audit_trail(archive: Archive) -> None:
    study = archive.quarantined("audited")
    path = f"/api/studies/{study}/accept"
    assert archive.http.post(f"{archive.base}{path}",
                             headers={"Origin": ATTACKER}).status_code == 403
    rows = until("the refusal is audited", lambda: archive.refusals(path))
    assert rows[0]["outcome"] == "403 cross-site"
    assert rows[0]["actor"] == "http:127.0.0.1"
    assert rows[0]["detail"] == {"client": "127.0.0.1", "count": 1, "method": "POST",
                                 "path": path, "origin": ATTACKER}


# -- Chromium, with a page from another origin -------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as started:
        yield started


@dataclass
class OtherSite:
    """Pages served by a plain ``http.server`` from another loopback port."""

    root: Path
    url: str

    def page(self, name: str, html: str) -> str:
        (self.root / name).write_text(f"<!doctype html><html><body>{html}</body></html>")
        return f"{self.url}/{name}"


@pytest.fixture(scope="module")
def other_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtherSite]:
    root = tmp_path_factory.mktemp("other-site")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OtherSite(root, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        context.close()


def test_a_cross_site_form_cannot_accept_a_quarantined_study(
    archive: Archive, other_site: OtherSite, page: Page,
) -> None:
    for prefix in ("/api", "/ui"):
        study = archive.quarantined(f"browser-form{prefix}")
        action = f"{archive.base}{prefix}/studies/{study}/accept"
        url = other_site.page(f"form{prefix.strip('/')}.html",
                              f'<form method="post" action="{action}"></form>'
                              "<script>document.forms[0].submit()</script>")
        with page.expect_response(action) as answered:
            page.goto(url)
        assert answered.value.status == 403
        assert archive.state(study) == "quarantined"
        assert until("the refusal is audited",
                     lambda a=action: archive.refusals(a.removeprefix(archive.base)))


def test_a_no_cors_fetch_cannot_reject_an_archived_study(
    archive: Archive, other_site: OtherSite, page: Page,
) -> None:
    study = archive.archived("browser-reject")
    path = f"/dicom-web/studies/{study}/reject/113001%5EDCM"
    page.goto(other_site.page("blank.html", "<p>elsewhere</p>"))
    sent = page.evaluate("""async (url) => {
        await fetch(url, {method: 'POST', mode: 'no-cors'});
        return 'sent';
    }""", f"{archive.base}{path}")
    assert sent == "sent"
    rows = until("the request reached the server and was refused",
                 lambda: archive.refusals(path.replace("%5E", "^")))
    assert rows[0]["outcome"] == "403 cross-site"
    assert archive.state(study) == "archived"
    assert len(archive.qido(study)) == 1


def test_a_page_on_another_origin_cannot_read_the_api(
    archive: Archive, other_site: OtherSite, page: Page,
) -> None:
    archive.quarantined("browser-read")
    page.goto(other_site.page("read.html", "<p>elsewhere</p>"))
    read = """async (url) => {
        try { const answer = await fetch(url); return 'read ' + (await answer.text()); }
        catch (error) { return 'failed: ' + error; }
    }"""
    for path in ("/api/studies", "/api/qa", "/ui/studies"):
        result = page.evaluate(read, f"{archive.base}{path}")
        assert result.startswith("failed: TypeError"), (path, result[:200])


def test_a_page_on_another_origin_cannot_frame_the_ui(
    archive: Archive, other_site: OtherSite, page: Page,
) -> None:
    target = f"{archive.base}/ui/qa"
    with page.expect_response(target) as answered:
        page.goto(other_site.page("frame.html", f'<iframe src="{target}"></iframe>'))
    assert answered.value.status == 200
    headers = answered.value.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    framed = page.frames[1]
    page.wait_for_load_state("load")
    assert framed.url != target
    assert not framed.locator("button").count()
