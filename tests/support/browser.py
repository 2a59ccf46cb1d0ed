"""Debian's Chromium for the browser tests, driven by Playwright (``make browser`` installs
it; the tests never download a browser)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # screenshots, git-ignored
# No sandbox (the tests run as root), and none of the background traffic this machine's
# closed network would refuse.
BASE_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run")


def chromium() -> Path:
    """The browser; missing is a failure where it could have been installed (root), a skip
    elsewhere."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root: "
                    "apt-get install chromium (or run make test as root)")
    pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium); "
                "the browser tests never download a browser")


@contextmanager
def launched(*extra_args: str) -> Iterator[Browser]:
    """A headless Chromium, closed afterwards."""
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True,
                                             args=[*BASE_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()
