"""OHIF over HTTPS (issue 13 item 8): ``pacs serve --tls-cert/--tls-key`` with a certificate
the test's own CA signs, and a Chromium that trusts that CA (an NSS database in its HOME, as a
site would deploy its CA; no certificate check is switched off). The study list is filled by
QIDO-RS over ``https://``, with the viewer's bearer token and CORS for OHIF's origin. Without
the CA the browser refuses the server, so the list stays empty: the test would fail."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.factories.datasets import make_uid, mr_instance
from tests.support import dcmtk, ohif
from tests.support.browser import chromium, launched, trusting_home
from tests.support.pki import make_server_pki
from tests.support.server import PacsServer, token

pytestmark = pytest.mark.slow

STUDY = make_uid("ohif", "https", "mr")


@dataclass
class Site:
    pacs: PacsServer
    ohif: ohif.StaticSite
    home: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    dist = ohif.dist_or_skip()
    chromium()
    root = tmp_path_factory.mktemp("ohif-https")
    pki = make_server_pki(root / "pki")
    with ohif.static_site(dist) as static:
        pacs = PacsServer(
            data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
            tls_ca=pki.ca,
            extra_args=["--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                        "--cors-origins", static.origin, "--auth", "required"])
        viewer_token = token(pacs, "ohif", "viewer")
        pacs.start()
        try:
            assert pacs.base_url.startswith("https://")
            static.configure(ohif.app_config(pacs.base_url, viewer_token))
            dcmtk.store_datasets(pacs.dimse_port, [mr_instance(
                PatientName="Https^Viewer", PatientID="OHIF-HTTPS-1", StudyInstanceUID=STUDY,
                StudyDescription="OHIF over HTTPS")], workdir=root / "mr")
            yield Site(pacs, static, trusting_home(pki.ca, root / "home"))
        finally:
            pacs.stop()


@pytest.fixture
def page(site: Site) -> Iterator[Page]:
    with launched(home=site.home) as browser:
        yield from _page(browser, site)


def _page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(base_url=site.ohif.origin,
                                  viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    try:
        yield opened
    finally:
        context.close()


def test_the_study_list_comes_over_https(page: Page, site: Site) -> None:
    answers: list[str] = []
    page.on("response", lambda response: answers.append(response.url))
    page.goto("/")
    rows = page.get_by_role("row")
    expect(rows.filter(has_text="OHIF over HTTPS").get_by_role("cell")).to_contain_text(
        ["Https, Viewer", "MR", "OHIF over HTTPS"])
    assert any(url.startswith(f"{site.pacs.base_url}/dicom-web/studies") for url in answers)
