"""The DUL's waits and the bounded PDU reader (``fast.py``) on an ``SSLSocket``.

OpenSSL decrypts a whole TLS record at a time: the bytes of it not yet read wait in its buffer,
where ``select`` does not see them (``SSLSocket.pending()`` does). And a blocking ``SSLSocket``
retries a read that the kernel's receive timeout ended, so a stalled peer would hold the reader
for ever. A real TLS connection over a socket pair shows both.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pacs.dimse.transport import fast
from pacs.services.tls_listener import server_context
from tests.support.pki import make_server_pki


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """(server side, client side) of a TLS connection, handshake done."""
    pki = make_server_pki(tmp_path / "pki")
    server_end, client_end = socket.socketpair()
    client_context = ssl.create_default_context(cafile=str(pki.ca))
    server = server_context(pki.cert, pki.key).wrap_socket(
        server_end, server_side=True, do_handshake_on_connect=False)
    client = client_context.wrap_socket(client_end, server_hostname="localhost",
                                        do_handshake_on_connect=False)
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    client.do_handshake()
    handshake.join(10)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


class _DulThread(threading.Thread):
    """Stands in for a DUL reactor thread: what ``_DulClock.sleep`` looks at."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._pacs_waker = fast._Waker()
        self.socket = SimpleNamespace(socket=raw)
        self._kill_thread = False

    def run(self) -> None:
        fast._DulClock.sleep(0.0001)

    def close(self) -> None:
        self._pacs_waker.close()


def test_the_dul_does_not_sleep_on_decrypted_bytes_select_cannot_see(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = tls_pair
    client.sendall(b"\x01" * 100)  # one TLS record
    assert server.recv(1) == b"\x01"
    assert server.pending() == 99  # decrypted, in OpenSSL's buffer; the socket itself is empty
    assert select.select([server], [], [], 0)[0] == []
    dul = _DulThread(server)
    waits: list[float] = []
    original = select.select

    def watched(*args: Any) -> Any:
        waits.append(args[3])
        return original(*args)

    monkeypatch.setattr(fast.select, "select", watched)
    try:
        dul.start()
        dul.join(10)
    finally:
        monkeypatch.undo()
        dul.close()
    assert waits == []  # returned at once: the reactor reads the PDU now


def test_a_stalled_tls_peer_ends_the_read_at_the_deadline(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
) -> None:
    server, client = tls_pair
    client.sendall(struct.pack(">BxL", 0x01, 200) + b"\x00" * 10)  # a PDU: 16 of 206 bytes
    outcome: list[BaseException | bool] = []

    def read() -> None:
        fast._wait_at_most(server, 0.5)
        view = memoryview(bytearray(206))
        try:
            outcome.append(fast._receive_into(server, view, time.monotonic() + 0.5, 0.5))
        except BaseException as error:  # noqa: BLE001 (what ended the read is the result)
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "the read of a stalled TLS peer never ended"
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError | BlockingIOError)
    assert server.gettimeout() == 0.5  # restored to the read timeout for the next PDU
