"""HTTPS (``--tls-cert``/``--tls-key``): a real server with a certificate the test's own CA
signs; clients verify the whole chain with that CA. The port speaks TLS only (a plain request
gets no HTTP answer), TLS 1.2 at least with BCP 195's suites, every answer carries HSTS, and
the DIMSE listener is unaffected. A certificate without its key (or the other way) is one line
and exit status 2."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.dicomweb.conftest import WebArchive
from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.pki import ServerPki, make_server_pki
from tests.support.server import PacsServer, own_index

STUDY = make_uid("https", "study")
HSTS = "max-age=31536000"
SERVER_ENDED_HANDSHAKE = "ALERT|UNEXPECTED_EOF"
"""The server refused (an alert, or asyncio's TLS closing the connection without one), not a
client unable to start: that would be ``NO_PROTOCOLS_AVAILABLE`` or ``NO_CIPHERS_AVAILABLE``."""


@dataclass
class HttpsArchive:
    server: PacsServer
    pki: ServerPki
    workdir: Path


@pytest.fixture(scope="module")
def https_archive(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpsArchive]:
    root = tmp_path_factory.mktemp("https")
    pki = make_server_pki(root / "pki")
    server = PacsServer(
        data_dir=root / "data", database_url=own_index(module_database_url, root),
        tls_ca=pki.ca, extra_args=["--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                                   "--tls-ca", str(pki.ca)],
    )
    server.start()  # polls https://127.0.0.1:PORT/health, trusting the CA
    try:
        yield HttpsArchive(server, pki, root)
    finally:
        server.stop()


def _client_context(pki: ServerPki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def _handshake(archive: HttpsArchive, context: ssl.SSLContext) -> str:
    """The TLS version negotiated with the server (raises ``ssl.SSLError`` when refused)."""
    with socket.create_connection(("127.0.0.1", archive.server.http_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return str(tls.version())


def test_health_over_https_verified_by_the_ca_with_hsts(https_archive: HttpsArchive) -> None:
    server = https_archive.server
    assert server.base_url.startswith("https://")
    with httpx.Client(verify=_client_context(https_archive.pki), timeout=30) as http:
        health = http.get(f"{server.base_url}/health")
        assert health.status_code == 200
        assert health.headers["strict-transport-security"] == HSTS
        # every answer, also an error of the DICOMweb front end
        missing = http.get(f"{server.base_url}/dicom-web/studies/1.2.3/metadata")
        assert missing.status_code == 404
        assert missing.headers["strict-transport-security"] == HSTS
    # a client without the CA does not trust the server: the chain is what is verified
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.base_url}/health", timeout=30)


def test_dimse_store_then_qido_with_dicomweb_client_over_https(
    https_archive: HttpsArchive,
) -> None:
    server = https_archive.server
    echo = dcmtk.echoscu(server.dimse_port)
    assert echo.returncode == 0, echo.stderr
    dcmtk.store_datasets(
        server.dimse_port, [ct_instance(StudyInstanceUID=STUDY, PatientID="P-HTTPS")],
        workdir=https_archive.workdir,
    )
    session = requests.Session()
    session.verify = str(https_archive.pki.ca)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, replaces session.verify
    client = DICOMwebClient(url=f"{server.base_url}/dicom-web", session=session)
    studies = client.search_for_studies(search_filters={"PatientID": "P-HTTPS"})
    assert [study["0020000D"]["Value"] for study in studies] == [[STUDY]]


def test_plain_http_on_the_https_port_gets_no_http_answer(https_archive: HttpsArchive) -> None:
    port = https_archive.server.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert not answer.startswith(b"HTTP/")  # at most a TLS alert, then the connection closes
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)


def test_tls_below_1_2_is_refused(https_archive: HttpsArchive) -> None:
    old = _client_context(https_archive.pki)
    with warnings.catch_warnings():  # the setters warn that TLS 1.0 and 1.1 are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client can speak TLS 1.1: the server refuses
    with pytest.raises(ssl.SSLError, match=SERVER_ENDED_HANDSHAKE):
        _handshake(https_archive, old)
    current = _client_context(https_archive.pki)
    current.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(https_archive, current) == "TLSv1.2"


def test_tls_1_2_offers_only_ecdhe_with_aead(https_archive: HttpsArchive) -> None:
    """A TLS 1.2 client offering only a CBC suite (allowed by OpenSSL's defaults) is refused;
    AES-GCM and ChaCha20-Poly1305 with ECDHE are accepted."""
    cbc = _client_context(https_archive.pki)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError, match=SERVER_ENDED_HANDSHAKE):
        _handshake(https_archive, cbc)
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        aead = _client_context(https_archive.pki)
        aead.maximum_version = ssl.TLSVersion.TLSv1_2
        aead.set_ciphers(suite)
        assert _handshake(https_archive, aead) == "TLSv1.2"


def _exchange_over_tls(archive: HttpsArchive, request: bytes) -> bytes:
    """Send ``request`` on a verified TLS connection; everything answered until it closes."""
    with socket.create_connection(("127.0.0.1", archive.server.http_port), timeout=10) as raw, \
            _client_context(archive.pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(request)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except ssl.SSLError:  # the server closed without close_notify after answering
            pass
        return answer


def test_the_http_limits_hold_under_tls(https_archive: HttpsArchive) -> None:
    """The guarded protocol of :mod:`pacs.http.server` reads the decrypted stream: headers over
    64 KiB still answer 431, smaller ones are served; both answers carry HSTS."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    filler = b"X-Filler: " + b"a" * 70 * 1024 + b"\r\n"
    hsts = b"\r\nstrict-transport-security: max-age=31536000\r\n"
    answer = _exchange_over_tls(https_archive, head + filler + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert hsts in answer.lower()
    answer = _exchange_over_tls(https_archive, head + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert hsts in answer.lower()


def test_plain_http_server_sends_no_hsts(web_archive: WebArchive) -> None:
    """Without a certificate nothing changes: plain HTTP, and no HSTS (RFC 6797 7.2)."""
    assert web_archive.server.base_url.startswith("http://")
    health = web_archive.http.get(f"{web_archive.server.base_url}/health")
    assert health.status_code == 200
    assert "strict-transport-security" not in health.headers


def _serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(("given", "expected"), [
    ("--tls-cert", "--tls-key: required with --tls-cert"),
    ("--tls-key", "--tls-key: needs --tls-cert too"),
])
def test_cert_without_key_or_key_without_cert_exits_2(
    tmp_path: Path, given: str, expected: str
) -> None:
    pki = make_server_pki(tmp_path / "pki")
    result = _serve(tmp_path, given, str(pki.cert if given == "--tls-cert" else pki.key))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pacs: error: {expected}")
    assert not (tmp_path / "data").exists()  # nothing started
    # the same from the environment
    variable = "PACS_" + given.removeprefix("--").replace("-", "_").upper()
    result = _serve(tmp_path, env={variable: str(pki.cert if given == "--tls-cert" else pki.key)})
    assert result.returncode == 2
    assert result.stderr.startswith(f"pacs: error: {expected}")


def test_key_of_another_certificate_or_missing_file_exits_2(tmp_path: Path) -> None:
    pki = make_server_pki(tmp_path / "pki")
    other = make_server_pki(tmp_path / "other")
    result = _serve(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(other.key))
    assert result.returncode == 2
    assert result.stderr.startswith("pacs: error: --tls-key: ")
    assert "is not the unencrypted PEM private key of" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _serve(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                    "--tls-ca", str(tmp_path / "absent.pem"))
    assert result.returncode == 2
    absent = tmp_path / "absent.pem"
    assert result.stderr.strip() == f"pacs: error: --tls-ca: {absent}: no such file"


def test_a_stop_does_not_wait_for_idle_keep_alive_clients(tmp_path: Path) -> None:
    """SIGTERM closes idle HTTPS connections at once: asyncio would otherwise wait up to 30 s
    per connection for the TLS close_notify of a client that keeps it open and never reads.
    The server exits cleanly (status 0) well inside a 15 s bound, the connection open."""
    pki = make_server_pki(tmp_path / "pki")
    server = PacsServer(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        tls_ca=pki.ca, extra_args=["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)],
    ).start()
    try:
        with httpx.Client(verify=server.verify) as idle:
            assert idle.get(f"{server.base_url}/health").status_code == 200  # kept alive
            assert server.stop(timeout=15) == 0
    finally:
        server.stop()
