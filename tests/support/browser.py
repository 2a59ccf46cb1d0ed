"""Debian's Chromium for the browser tests, driven by Playwright (``make browser`` installs
it; the tests never download a browser)."""

from __future__ import annotations

import os
import subprocess
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


CERTUTIL = Path("/usr/bin/certutil")  # Debian's libnss3-tools (make browser)


def trusting_home(ca: Path, home: Path) -> Path:
    """A home folder whose NSS database (where Chromium on Linux keeps the CAs it trusts)
    trusts ``ca`` for TLS servers: a browser given it verifies a server's chain as a user's
    browser would, with no certificate check switched off."""
    if not CERTUTIL.exists():
        pytest.fail(f"{CERTUTIL} is missing: run `make browser` (apt-get install libnss3-tools)")
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(CERTUTIL), "-d", f"sql:{database}", "-N", "--empty-password"],
                   check=True, capture_output=True)
    subprocess.run([str(CERTUTIL), "-d", f"sql:{database}", "-A", "-t", "C,,",
                    "-n", "pacs test CA", "-i", str(ca)], check=True, capture_output=True)
    return home


@contextmanager
def launched(*extra_args: str, home: Path | None = None) -> Iterator[Browser]:
    """A headless Chromium, closed afterwards; ``home``: its HOME (see :func:`trusting_home`)."""
    executable = chromium()
    env = {**os.environ, "HOME": str(home)} if home is not None else None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True,
                                             args=[*BASE_ARGS, *extra_args], env=env)
        try:
            yield browser
        finally:
            browser.close()
