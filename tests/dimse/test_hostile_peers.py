"""Hostile or broken DIMSE peers, against a real ``pacs serve`` (issue 12, DIMSE items 1 and 2).

A stalled connection (nothing sent, a partial PDU, a PDU shorter than its length field) is
closed within ``PACS_DIMSE_READ_TIMEOUT`` and never blocks other peers; the connections of
one address beyond ``PACS_MAX_CONNECTIONS_PER_HOST`` are closed at once; a PDU longer than
the server reads is refused before it is buffered. The hostile sockets come from 127.0.0.2,
the legitimate peers from 127.0.0.1 (DCMTK, ``TCP_NODELAY=1``).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from storage.index.audit import AuditRecord
from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.server import PacsServer
from tests.support.wait import until

HOSTILE = "127.0.0.2"
A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
STUDY = "1.2.826.0.1.3680043.8.498.12.1"


def _header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BxL", pdu_type, length)


def _connect(port: int, payload: bytes = b"") -> socket.socket:
    """A socket from 127.0.0.2 that sends ``payload`` (as much as the server takes) and then
    nothing."""
    sock = socket.socket()
    sock.bind((HOSTILE, 0))
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    try:
        sock.sendall(payload)
    except OSError:
        pass  # closed by the server already
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (what it sent before, an A-ABORT, is read)."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:  # reset by the server
        return True
    return True


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def _echo_from(address: str, port: int) -> bool:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", bind_address=(address, 0))
    if not assoc.is_established:
        transport = assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.close()  # (pynetdicom leaves it open when the peer closes first)
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


@pytest.mark.fast_transport("PDUs are read without a time limit")
def test_stalled_connections_are_closed_and_block_no_one(
    tmp_path: Path, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--dimse-processes", "2"])
    server.start_env = {"PACS_DIMSE_READ_TIMEOUT": "2"}
    server.start()
    try:
        port = server.dimse_port
        # an association that is established, then idle
        ae = AE(ae_title="IDLE")
        ae.add_requested_context(Verification)
        idle = ae.associate("127.0.0.1", port, ae_title="PACS", bind_address=(HOSTILE, 0))
        assert idle.is_established
        silent = [_connect(port) for _ in range(5)]
        partial_header = [_connect(port, b"\x01\x00\x00") for _ in range(2)]
        short_pdu = [_connect(port, _header(A_ASSOCIATE_RQ, 1000) + b"\x00" * 100)
                     for _ in range(5)]
        huge = [_connect(port, _header(P_DATA_TF, 0xFFFFFFF0) + b"\x00" * 100)
                for _ in range(70)]
        sockets.extend(silent + partial_header + short_pdu + huge)

        echo = dcmtk.echoscu(port)
        assert echo.returncode == 0, echo.stderr

        # closed by the server, within the timeout (polled, with a bounded wait)
        until("every stalled socket closed", lambda: all(_closed(s) for s in sockets), 20)
        until("the idle association aborted", lambda: not idle.is_established, 20)
        assert idle.is_aborted
        assert dcmtk.echoscu(port).returncode == 0
    finally:
        assert server.stop() == 0


@pytest.mark.fast_transport(
    "a connection closed before its A-ASSOCIATE-RQ is noticed only after the ARTIM time")
def test_connections_beyond_the_limit_of_one_address_are_closed_at_once(
    tmp_path: Path, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    """Counted across the worker processes: the count goes down as the connections close."""
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--dimse-processes", "2"])
    server.start_env = {"PACS_MAX_CONNECTIONS_PER_HOST": "4"}  # read timeout: 30 s
    server.start()
    try:
        port = server.dimse_port
        held = [_connect(port) for _ in range(4)]
        sockets.extend(held)
        excess = [_connect(port) for _ in range(3)]
        sockets.extend(excess)
        until("the excess connections closed", lambda: all(_closed(s) for s in excess), 10)
        assert not any(_closed(s) for s in held)  # well within the 30 s timeout
        assert dcmtk.echoscu(port).returncode == 0  # another address is not limited

        for sock in sockets:
            sock.close()
        sockets.clear()
        until("127.0.0.2 admitted again", lambda: _echo_from(HOSTILE, port), 20)

        def refusals() -> list[AuditRecord]:
            events = services.workflow.audit_events(action="connection-refused")
            return events if sum(event.detail["count"] for event in events) >= 3 else []

        with server.services() as services:  # the first at once, the others aggregated
            refused = until("the refusals audited", refusals, 30)
        assert {event.actor for event in refused} == {f"dimse:{HOSTILE}"}
        assert {event.outcome for event in refused} == {"too many connections from this address"}
        assert sum(event.detail["count"] for event in refused) == 3
    finally:
        assert server.stop() == 0


def test_rejected_associations_are_audited(tmp_path: Path, sqlite_url: str) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--dimse-processes", "1"])
    server.start_env = {"PACS_MAX_ASSOCIATIONS": "1"}
    server.start()
    try:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        holder = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert holder.is_established
        assert dcmtk.run("echoscu", "-aet", "LATE", "-aec", "PACS", "127.0.0.1",
                         str(server.dimse_port)).returncode != 0
        holder.release()
        with server.services() as services:
            rejected = until("the rejection audited", lambda: services.workflow.audit_events(
                action="association-rejected"), 30)
        assert rejected[0].actor == "dimse:LATE@127.0.0.1"
        assert rejected[0].outcome == "too many associations (local limit exceeded)"
    finally:
        assert server.stop() == 0


def _rss_kb(server: PacsServer) -> int:
    """Resident memory of the server and its DIMSE workers, kB (from /proc)."""
    assert server.process is not None
    total = 0
    for pid in [server.process.pid, *server.children()]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _store_one(port: int, tmp_path: Path, number: int) -> int:
    path = f.write_part10(
        f.ct_instance(PatientID="RSS-1", InstanceNumber=number, StudyInstanceUID=STUDY),
        tmp_path / f"{number}.dcm",
    )
    ae = AE(ae_title="STORER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def _flood(sock: socket.socket, megabytes: int) -> None:
    """Send up to ``megabytes`` MB, stopping when the server closes the connection."""
    chunk = b"\x00" * (1 << 20)
    try:
        sock.settimeout(10)
        for _ in range(megabytes):
            sock.sendall(chunk)
    except OSError:
        pass


@pytest.mark.fast_transport("PDU lengths are not bounded")
def test_a_pdu_longer_than_the_limit_is_refused_before_it_is_buffered(
    tmp_path: Path, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--dimse-processes", "2"])
    server.start()
    try:
        port = server.dimse_port
        for number in range(1, 5):  # every process has served a store before the baseline
            assert _store_one(port, tmp_path, number) == 0x0000
        before = _rss_kb(server)

        # a P-DATA-TF PDU claiming 1 GiB on an established association
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        assert raw is not None
        sockets.append(raw)  # (pynetdicom leaves an aborted requestor's socket open)
        raw.sendall(_header(P_DATA_TF, 1 << 30))
        _flood(raw, 64)
        until("the association aborted", lambda: not assoc.is_established, 20)

        # an A-ASSOCIATE-RQ claiming 1 GiB
        request = _connect(port, _header(A_ASSOCIATE_RQ, 1 << 30))
        sockets.append(request)
        _flood(request, 64)
        request.setblocking(False)
        until("the oversized A-ASSOCIATE-RQ refused", lambda: _closed(request), 20)

        grown = _rss_kb(server) - before
        assert grown < 8 * 1024, f"RSS grew by {grown} kB"
        assert _store_one(port, tmp_path, 5) == 0x0000
    finally:
        assert server.stop() == 0


@pytest.mark.fast_transport("the idle timer runs during a long C-MOVE")
def test_a_long_c_move_is_not_idleness(tmp_path: Path, sqlite_url: str) -> None:
    """The idle timeout (``PACS_DIMSE_READ_TIMEOUT``) counts from the last answer: a C-MOVE
    that takes longer, while its requestor waits silently, leaves the association usable."""
    slow = AE(ae_title="SLOWDEST")
    slow.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)

    def on_store(event: Any) -> int:
        time.sleep(1.5)  # a slow destination (the peer's behaviour under test, not a wait)
        return 0x0000

    destination = slow.start_server(("127.0.0.1", 0), block=False,
                                    evt_handlers=[(evt.EVT_C_STORE, on_store)])
    server = PacsServer(
        data_dir=tmp_path / "data", database_url=sqlite_url,
        extra_args=["--dimse-processes", "1",
                    "--peer", f"SLOWDEST=127.0.0.1:{destination.server_address[1]}"],
    )
    server.start_env = {"PACS_DIMSE_READ_TIMEOUT": "2"}
    server.start()
    try:
        for number in (1, 2):
            assert _store_one(server.dimse_port, tmp_path, number) == 0x0000
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = STUDY
        statuses = [int(status.Status) for status, _ in assoc.send_c_move(
            query, "SLOWDEST", StudyRootQueryRetrieveInformationModelMove)]
        assert statuses[-1] == 0x0000, statuses
        assert int(assoc.send_c_echo().Status) == 0x0000  # still there after > 2 s of silence
        assoc.release()
    finally:
        assert server.stop() == 0
        destination.shutdown()

