"""CORS for browser viewers: the default on loopback, and configured origins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pacs.settings import Settings
from tests.support.server import PacsServer


def test_default_cors_is_get_from_anywhere_on_loopback_only() -> None:
    assert Settings(http_host="127.0.0.1").effective_cors == (("*",), ("GET", "HEAD", "OPTIONS"))
    assert Settings(http_host="0.0.0.0").effective_cors[0] == ()
    origins, methods = Settings(cors_origins="http://a.example, http://b.example").effective_cors
    assert origins == ("http://a.example", "http://b.example")
    assert "POST" in methods


@pytest.fixture
def cors_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--cors-origins", "http://viewer.example"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_configured_origins_may_post_and_others_get_no_cors_headers(
    cors_server: PacsServer,
) -> None:
    url = f"{cors_server.base_url}/dicom-web/studies"
    allowed = httpx.get(url, headers={"Origin": "http://viewer.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://viewer.example"
    preflight = httpx.options(url, headers={"Origin": "http://viewer.example",
                                            "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    other = httpx.get(url, headers={"Origin": "http://elsewhere.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
