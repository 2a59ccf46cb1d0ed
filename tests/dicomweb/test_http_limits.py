"""Hostile HTTP clients over raw sockets against a real ``pacs serve``: oversized headers
(431), headers that never complete (slowloris: closed on a timer), connection caps (503 beyond,
per client address and in total), and the audit rows of refused requests."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import PacsServer
from tests.support.wait import until

HEADER_TIMEOUT_S = 1.0
PER_HOST = 40
OTHER_HOST = "127.0.0.2"  # a second client address on loopback (127.0.0.0/8)
CLOSE_WAIT_S = 30.0  # bounded wait for the server to close a connection


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    root = tmp_path_factory.mktemp("limits")
    started = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
        extra_args=["--max-request-mb", "1", "--dimse-processes", "1"],
        start_env={"PACS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
                   "PACS_HTTP_MAX_CONNECTIONS_PER_HOST": str(PER_HOST)},
    ).start()
    try:
        yield started
    finally:
        started.stop()


def _connect(server: PacsServer, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=CLOSE_WAIT_S,
                                    source_address=(source, 0))


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _request(headers: bytes, body: bytes = b"", method: bytes = b"GET",
             path: bytes = b"/health") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
            + b"Connection: close\r\n\r\n" + body)


def _audit(server: PacsServer) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/audit",
                       params={"action": "http-refused", "limit": 10000})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


def test_request_headers_over_64_kib_answer_431_and_close_and_fewer_are_served(
    server: PacsServer,
) -> None:
    with closing(_connect(server)) as sock:
        sock.sendall(_request(b"X-Filler: " + b"a" * (70 * 1024) + b"\r\n"))
        answer = _read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]

    # Many small header lines count the same.
    lines = b"".join(b"X-Line-%d: %s\r\n" % (n, b"b" * 60) for n in range(1200))
    with closing(_connect(server)) as sock:
        sock.sendall(_request(lines))
        assert _read_to_eof(sock).startswith(b"HTTP/1.1 431 ")

    # Under the limit, headers are served; a body sent with them is not counted as header.
    with closing(_connect(server)) as sock:
        sock.sendall(_request(b"X-Filler: " + b"a" * (60 * 1024) + b"\r\n"))
        assert _read_to_eof(sock).startswith(b"HTTP/1.1 200 ")

    # Small headers and a 300 KB body in one write: the body is not counted as header.
    body = b"x" * 300_000
    head = (b"Content-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n"
            b"Content-Length: %d\r\n" % len(body))
    with closing(_connect(server)) as sock:
        sock.sendall(_request(head, body, method=b"POST", path=b"/dicom-web/studies"))
        answer = _read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # STOW's own answer


def _closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Send ``trickle`` one byte at a time, a byte now and then, until the server closes
    the connection; what it sent. Fails after :data:`CLOSE_WAIT_S`."""
    received = b""
    deadline = time.monotonic() + CLOSE_WAIT_S
    position = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
            continue
        if trickle:
            try:
                sock.send(trickle[position % len(trickle):position % len(trickle) + 1])
            except OSError:
                return received
            position += 1
    raise AssertionError(f"the server kept the connection open for {CLOSE_WAIT_S} s")


def test_a_slowloris_connection_is_closed_on_a_timer(server: PacsServer) -> None:
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = _closed_by_server(sock, trickle=b"X-Slow: abcdefgh\r\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]

    with closing(_connect(server)) as idle:  # connected, nothing sent: closed, no answer
        assert _closed_by_server(idle) == b""

    # After a first request on a kept-alive connection, the next one's headers are timed too.
    with closing(_connect(server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\n")
        answer = _closed_by_server(sock, trickle=b"X-Slow: abcdefgh\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"HTTP/1.1 408 " in answer


def test_many_slow_and_idle_connections_do_not_stop_others(server: PacsServer) -> None:
    """From another address: PER_HOST connections are held until their timer, the rest get
    503 at once; meanwhile /health from 127.0.0.1 answers, and afterwards all are closed."""
    with ExitStack() as stack:
        held = [stack.enter_context(closing(_connect(server, OTHER_HOST)))
                for _ in range(PER_HOST + 20)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
        answers = [_closed_by_server(sock, trickle=b"z") for sock in held]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    assert len(refused) == 20
    assert len(timed_out) == PER_HOST
    assert all(b"retry-after: 1" in a.lower() for a in refused)
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_connections_beyond_the_total_cap_get_503(tmp_path: Path) -> None:
    server = PacsServer(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        extra_args=["--dimse-processes", "1"],
        start_env={"PACS_HTTP_MAX_CONNECTIONS": "10", "PACS_HTTP_HEADER_TIMEOUT": "60"},
    ).start()
    try:
        with ExitStack() as stack:
            held = [stack.enter_context(closing(_connect(server))) for _ in range(10)]
            # Each of them is counted before the next connects.
            held[-1].sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert held[-1].recv(100).startswith(b"HTTP/1.1 200 ")
            with closing(_connect(server)) as extra:
                assert _read_to_eof(extra).startswith(b"HTTP/1.1 503 ")
        # Closed by the client: the slots are free again.
        until("a connection slot is free",
              lambda: httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200)
    finally:
        server.stop()


def test_refused_requests_are_audited_once_per_client_and_second(server: PacsServer) -> None:
    with closing(_connect(server, "127.0.0.3")) as sock:
        sock.sendall(_request(b"X-Filler: " + b"a" * (70 * 1024) + b"\r\n"))
        _read_to_eof(sock)
    too_large = httpx.post(
        f"{server.base_url}/dicom-web/studies", content=b"x" * 1_100_000,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert too_large.status_code == 413
    flood = 300
    with httpx.Client(base_url=server.base_url) as http:
        for _ in range(flood):
            answer = http.post("/api/studies/1.2.3/accept",
                               headers={"Origin": "http://attacker.example"})
            assert answer.status_code == 403

    def rows() -> list[dict[str, Any]] | None:
        found = _audit(server)
        cross = [r for r in found if r["outcome"] == "403 cross-site"]
        if sum(r["detail"]["count"] for r in cross) < flood:
            return None
        return found

    found = until("the refused requests are audited", rows)
    assert any(row["outcome"].startswith("431 ") and row["actor"] == "http:127.0.0.3"
               for row in found)
    assert any(row["outcome"].startswith("413 ") and row["detail"]["method"] == "POST"
               and row["detail"]["path"] == "/dicom-web/studies" for row in found)
    cross = [r for r in found if r["outcome"] == "403 cross-site"]
    assert cross[0]["detail"]["origin"] == "http://attacker.example"
    assert cross[0]["detail"]["path"] == "/api/studies/1.2.3/accept"
    assert len(cross) < flood / 10  # one row per second, each with its count


def test_a_large_body_outside_stow_answers_413_and_changes_nothing(
    server: PacsServer, tmp_path: Path,
) -> None:
    """The JSON of /api (and the UI's forms) is bounded at 1 MiB, by Content-Length or while
    a chunked body arrives; only STOW-RS takes large bodies (up to --max-request-mb)."""
    from tests.factories.datasets import ct_instance, make_uid
    from tests.support import dcmtk

    study = make_uid("http-limits", "body")
    dcmtk.store_datasets(server.dimse_port, [ct_instance(StudyInstanceUID=study)],
                         workdir=tmp_path)
    url = f"{server.base_url}/api/studies/{study}"
    assert httpx.get(url).json()["state"] == "archived"
    reason = "x" * (2 << 20)

    declared = httpx.post(f"{url}/reject", json={"reason": reason})
    assert declared.status_code == 413, declared.text
    assert "body" in declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"reason": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    chunked = httpx.post(f"{url}/reject", content=chunks(),
                         headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert httpx.get(url).json()["state"] == "archived"  # neither changed anything

    fine = httpx.post(f"{url}/reject", json={"reason": "wrong patient"})
    assert fine.status_code == 200, fine.text
    assert httpx.get(url).json()["state"] == "rejected"
    path = f"/api/studies/{study}/reject"
    until("the 413 audited", lambda: [
        row for row in _audit(server)
        if row["outcome"].startswith("413") and row["detail"].get("path") == path])
