"""CORS: DICOMweb answers it to the configured origins only (none by default); ``/api`` and
the UI never answer it, so a page on another site cannot read the patient list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from pacs.settings import Settings
from tests.support.server import PacsServer

VIEWER = "http://viewer.example:3000"
READ = ("GET", "HEAD", "OPTIONS")


def test_settings_no_origin_by_default_any_may_read_with_star_named_may_post() -> None:
    assert Settings().effective_cors == ((), ())
    assert Settings(http_host="0.0.0.0").effective_cors == ((), ())
    assert Settings(cors_origins="*").effective_cors == (("*",), READ)
    origins, methods = Settings(cors_origins="http://a.example, https://b.example/"
                                ).effective_cors
    assert origins == ("http://a.example", "https://b.example")
    assert methods == (*READ, "POST")
    with pytest.raises(ValidationError, match="cannot be combined"):
        Settings(cors_origins="*,http://a.example")
    with pytest.raises(ValidationError, match="is not scheme://host"):
        Settings(cors_origins="a.example/path")


def _server(tmp_path: Path, *args: str) -> PacsServer:
    return PacsServer(data_dir=tmp_path / "data",
                      database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
                      extra_args=["--dimse-processes", "1", *args]).start()


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[PacsServer]:
    server = _server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cors_server(tmp_path: Path) -> Iterator[PacsServer]:
    server = _server(tmp_path, "--cors-origins", VIEWER)
    try:
        yield server
    finally:
        server.stop()


def _preflight(url: str, origin: str, method: str) -> httpx.Response:
    return httpx.options(url, headers={"Origin": origin,
                                       "Access-Control-Request-Method": method,
                                       "Access-Control-Request-Headers": "accept"})


def test_by_default_no_origin_gets_cors(default_server: PacsServer) -> None:
    base = default_server.base_url
    for url in (f"{base}/dicom-web/studies", f"{base}/api/studies", f"{base}/ui/studies",
                f"{base}/health"):
        answer = httpx.get(url, headers={"Origin": "http://127.0.0.1:3000"})
        assert answer.status_code == 200, url
        assert not [h for h in answer.headers if h.startswith("access-control-")], url
        preflight = _preflight(url, "http://127.0.0.1:3000", "GET")
        assert "access-control-allow-origin" not in preflight.headers, url


def test_configured_origins_read_and_post_dicomweb_only(cors_server: PacsServer) -> None:
    base = cors_server.base_url
    studies = f"{base}/dicom-web/studies"
    allowed = httpx.get(studies, headers={"Origin": VIEWER})
    assert allowed.headers["access-control-allow-origin"] == VIEWER
    for method in ("GET", "POST"):
        preflight = _preflight(studies, VIEWER, method)
        assert preflight.status_code == 200, method
        assert preflight.headers["access-control-allow-origin"] == VIEWER
        assert method in preflight.headers["access-control-allow-methods"]
    wado_uri = httpx.get(f"{base}/wado", headers={"Origin": VIEWER})
    assert wado_uri.headers["access-control-allow-origin"] == VIEWER  # even on a 400

    other = httpx.get(studies, headers={"Origin": "http://elsewhere.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    assert _preflight(studies, "http://elsewhere.example", "POST").status_code == 400

    for url in (f"{base}/api/studies", f"{base}/api/qa", f"{base}/ui/studies"):
        answer = httpx.get(url, headers={"Origin": VIEWER})
        assert answer.status_code == 200, url
        assert not [h for h in answer.headers if h.startswith("access-control-")], url
        preflight = _preflight(url, VIEWER, "POST")
        assert "access-control-allow-origin" not in preflight.headers, url


def test_a_star_lets_any_origin_read_dicomweb_but_not_change_it(tmp_path: Path) -> None:
    server = _server(tmp_path, "--cors-origins", "*")
    try:
        studies = f"{server.base_url}/dicom-web/studies"
        answer = httpx.get(studies, headers={"Origin": "http://anyone.example"})
        assert answer.headers["access-control-allow-origin"] == "*"
        assert _preflight(studies, "http://anyone.example", "POST").status_code == 400
        posted = httpx.post(studies, headers={"Origin": "http://anyone.example",
                                              "Content-Type": "application/dicom"},
                            content=b"")
        assert posted.status_code == 403
    finally:
        server.stop()
