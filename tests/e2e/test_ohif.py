"""The OHIF viewer as published on npm, with the shipped ``docs/ohif-app-config.js``, in
headless Chromium against a running ``pacs serve``: the study list shows the stored studies,
a CT series renders (pixels on the viewport, not a blank canvas) and scrolls (the image
changes on the next slice).

OHIF runs on its own origin (a static server on another port), so pacs is started with
``--cors-origins`` naming it, exactly as docs/ohif.md tells users, and with ``--auth
required``: OHIF sends the viewer token the shipped configuration is given (every request
without it would answer 401). ``make ohif`` fetches the
pinned ``@ohif/app`` dist; ``make browser`` installs Chromium. Screenshots go to
``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from pydicom.dataset import Dataset

from tests.factories.datasets import ct_instance, make_uid, mr_instance
from tests.support import dcmtk, ohif
from tests.support.browser import ARTIFACTS, chromium, launched
from tests.support.server import PacsServer, token
from tests.support.wait import until

pytestmark = pytest.mark.slow

SLICES = 20
SIZE = 256
CT_PATIENT = ("OHIF^Ct", "OHIF-CT-1")
MR_PATIENT = ("OHIF^Mr", "OHIF-MR-1")
CT_STUDY = make_uid("ohif", "ct")
MR_STUDY = make_uid("ohif", "mr")
# What Chromium needs to draw WebGL without a GPU (SwiftShader, in the browser itself).
WEBGL_ARGS = ("--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader")
VIEWPORT = '[data-viewport-uid] canvas, .viewport-element canvas'


def ct_slice(number: int) -> Dataset:
    """One axial CT slice whose content moves with the slice: a bright disc that travels
    across a soft-tissue body, so the next slice is visibly another image."""
    ds = ct_instance(PatientName=CT_PATIENT[0], PatientID=CT_PATIENT[1],
                     StudyInstanceUID=CT_STUDY, StudyDescription="OHIF CT",
                     InstanceNumber=number, Rows=SIZE, Columns=SIZE)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    hu = np.full((SIZE, SIZE), -1000.0)  # air
    hu[((x - SIZE / 2) / (0.45 * SIZE)) ** 2 + ((y - SIZE / 2) / (0.35 * SIZE)) ** 2 <= 1] = 40
    cx = SIZE * (0.2 + 0.6 * (number - 1) / (SLICES - 1))
    hu[(x - cx) ** 2 + (y - SIZE / 2) ** 2 <= (SIZE / 10) ** 2] = 1000  # bone, moving
    stored = np.clip(hu + 1024, 0, 4095).astype("<u2")  # RescaleIntercept -1024
    ds.PixelData = stored.tobytes()
    return ds


@dataclass
class Viewer:
    pacs: PacsServer
    site: ohif.StaticSite


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    dist = ohif.dist_or_skip()
    chromium()
    root = tmp_path_factory.mktemp("ohif")
    with ohif.static_site(dist) as site:
        pacs = PacsServer(data_dir=root / "data",
                          database_url=f"sqlite:///{root / 'index.sqlite'}",
                          extra_args=["--cors-origins", site.origin, "--auth", "required"])
        viewer_token = token(pacs, "ohif", "viewer")
        pacs.start()
        try:
            site.configure(ohif.app_config(pacs.base_url, viewer_token))
            dcmtk.store_datasets(pacs.dimse_port, [ct_slice(n) for n in range(1, SLICES + 1)],
                                 workdir=root / "ct")
            dcmtk.store_datasets(pacs.dimse_port,
                                 [mr_instance(PatientName=MR_PATIENT[0],
                                              PatientID=MR_PATIENT[1],
                                              StudyInstanceUID=MR_STUDY,
                                              StudyDescription="OHIF MR")],
                                 workdir=root / "mr")
            yield Viewer(pacs, site)
        finally:
            pacs.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched(*WEBGL_ARGS) as started:
        yield started


@pytest.fixture
def page(browser: Browser, viewer: Viewer) -> Iterator[Page]:
    context = browser.new_context(base_url=viewer.site.origin,
                                  viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert errors == []  # e.g. "appConfig.extensions is not iterable" with an old config


def test_study_list_shows_the_stored_studies(page: Page) -> None:
    page.goto("/")

    rows = page.get_by_role("row")
    # patient name, modality, description, number of instances: from QIDO-RS
    expect(rows.filter(has_text="OHIF CT").get_by_role("cell")).to_contain_text(
        ["OHIF, Ct", "CT", "OHIF CT", "20"])
    expect(rows.filter(has_text="OHIF MR").get_by_role("cell")).to_contain_text(
        ["OHIF, Mr", "MR", "OHIF MR", "1"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))


def test_a_ct_series_renders_and_scrolls(page: Page) -> None:
    page.goto(f"/viewer?StudyInstanceUIDs={CT_STUDY}")
    canvas = page.locator(VIEWPORT).first
    expect(canvas).to_be_visible()
    _dismiss_notices(page)

    first = until("the first CT slice drawn in the viewport", lambda: _disc(canvas, "first"))
    canvas.hover()
    page.mouse.wheel(0, 120)  # one slice on
    nxt = until("the next slice drawn", lambda: _disc(canvas, "next", unlike=first))

    assert nxt.x > first.x  # the disc moves right from slice to slice (ct_slice)
    expect(page.get_by_text(f"(2/{SLICES})")).to_be_visible()  # the overlay: image 2 of 20


def _dismiss_notices(page: Page) -> None:
    """OHIF's first-visit tour and its "investigational use" banner cover the viewport."""
    for name in ("Skip all", "Confirm and hide"):
        button = page.get_by_role("button", name=name)
        try:
            button.click(timeout=10_000)
        except PlaywrightTimeout:
            pass  # not shown in this version


@dataclass(frozen=True)
class Disc:
    x: float  # centre of the bright disc, screen pixels from the viewport's left
    y: float


def _disc(canvas: Locator, name: str, unlike: Disc | None = None) -> Disc | None:
    """The bright disc of a drawn CT slice, or None while the viewport is blank (or still
    shows ``unlike``). A screenshot, as the user sees it: a WebGL canvas is not readable."""
    png = canvas.screenshot()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"ohif-{name}-slice.png").write_bytes(png)
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    body = np.count_nonzero((grey > 80) & (grey < 180))  # soft tissue at W400/L40: mid grey
    # bone: white, in the band through the image's middle where the disc travels (OHIF's
    # tour tooltip and notices, light text on dark, sit at the top and the bottom)
    top = grey.shape[0] * 2 // 5
    ys, xs = np.nonzero(grey[top:grey.shape[0] * 3 // 5] > 240)
    if body < grey.size // 10 or xs.size < 500:
        return None
    disc = Disc(float(xs.mean()), float(ys.mean()) + top)
    if unlike is not None and abs(disc.x - unlike.x) < 2:
        return None
    return disc
