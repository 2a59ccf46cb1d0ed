"""The OHIF viewer as published on npm (``@ohif/app``, whose tarball ships a servable
``dist/``), fetched once into ``.cache/ohif/<version>/`` and served by a small static server.

``make ohif`` runs this module (``python -m tests.support.ohif``): ``npm pack`` of the pinned
version, then the tarball's ``dist/`` unpacked next to it. The tests never download: a missing
dist is a failure where ``make ohif`` could have fetched it, a skip elsewhere.

The server answers ``/app-config.js`` with the configuration it is given (the shipped
``docs/ohif-app-config.js`` with pacs's URL filled in) instead of the dist's own, and any path
that is not a file with ``index.html``: OHIF routes in the browser (``/viewer?...``), as the
dist's ``serve.json`` / ``_redirects`` tell a static host to do.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

OHIF_VERSION = "3.13.2"  # the @ohif/app release docs/ohif-app-config.js is tested with
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "ohif"
SHIPPED_CONFIG = REPO / "docs" / "ohif-app-config.js"
SHIPPED_PACS_URL = "http://127.0.0.1:8042"  # what the shipped config points at


def dist_dir(version: str = OHIF_VERSION) -> Path:
    return CACHE / version / "dist"


def fetch(version: str = OHIF_VERSION) -> Path:
    """``npm pack @ohif/app@version`` into the cache and unpack its ``dist/`` (once)."""
    dist = dist_dir(version)
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is missing: install Debian's nodejs and npm (make ohif does)")
    folder = CACHE / version
    folder.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run(
        [npm, "pack", f"@ohif/app@{version}", "--pack-destination", str(folder), "--silent"],
        capture_output=True, text=True, check=True, timeout=900,
    ).stdout.split()[-1]
    tarball = folder / packed
    staging = folder / "unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(staging, filter="data")  # no links out, no absolute paths
    (staging / "package" / "dist").rename(dist)  # complete, or not there at all
    shutil.rmtree(staging)
    tarball.unlink()
    return dist


def dist_or_skip(version: str = OHIF_VERSION) -> Path:
    """The unpacked dist; missing is a failure where ``make ohif`` can fetch it (npm), a skip
    elsewhere."""
    dist = dist_dir(version)
    if (dist / "index.html").is_file():
        return dist
    if shutil.which("npm") is None and os.geteuid() != 0:
        pytest.skip(f"OHIF {version} is not in {CACHE} and npm is missing: run `make ohif`")
    pytest.fail(f"OHIF {version} is not in {CACHE}: run `make ohif` (npm pack @ohif/app)")


SHIPPED_TOKEN = "const PACS_TOKEN = null;"  # what the shipped config says: no token


def app_config(pacs_url: str, token: str | None = None) -> str:
    """The shipped ``docs/ohif-app-config.js`` pointing at ``pacs_url`` (and sending
    ``token`` as its bearer token), as docs/ohif.md tells users to do."""
    text = SHIPPED_CONFIG.read_text()
    if SHIPPED_PACS_URL not in text:
        raise AssertionError(f"{SHIPPED_CONFIG} no longer points at {SHIPPED_PACS_URL}")
    if SHIPPED_TOKEN not in text:
        raise AssertionError(f"{SHIPPED_CONFIG} no longer has {SHIPPED_TOKEN!r}")
    if token is not None:
        text = text.replace(SHIPPED_TOKEN, f"const PACS_TOKEN = {token!r};")
    return text.replace(SHIPPED_PACS_URL, pacs_url)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    config = b"window.config = {};"  # replaced by StaticSite.configure before a browser comes


class _Handler(SimpleHTTPRequestHandler):
    """The dist's files; ``/app-config.js`` replaced; index.html for client-side routes."""

    def send_head(self) -> Any:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js" and isinstance(self.server, _Server):
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.server.config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return io.BytesIO(self.server.config)
        if not Path(self.translate_path(path)).exists():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


class StaticSite:
    """The dist on a free loopback port, serving from the start: its origin is known before
    pacs starts (pacs must name it in ``--cors-origins``), its configuration after."""

    def __init__(self, dist: Path) -> None:
        self._server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(dist)))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def configure(self, config: str) -> None:
        """What ``/app-config.js`` answers from now on."""
        self._server.config = config.encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextmanager
def static_site(dist: Path) -> Iterator[StaticSite]:
    site = StaticSite(dist)
    try:
        yield site
    finally:
        site.close()


if __name__ == "__main__":
    print(f"OHIF {OHIF_VERSION}: {fetch(sys.argv[1] if len(sys.argv) > 1 else OHIF_VERSION)}")
