"""Imaging orders over HL7 v2 / MLLP against a real ``pacs serve --hl7-port`` on SQLite and
PostgreSQL, over real TCP sockets: ORM^O01 NW creates the order (``GET /api/orders`` shows
the fields mapped as dcm4chee maps them), XO updates it and CA cancels it, several messages
on one connection; OMI^O23 takes its identifiers from IPC; a message that cannot be served
is answered AR or AE with the reason and an ERR segment; a frame over the size limit is
refused and the listener goes on; a stalled connection neither blocks another client nor
stays open past the read timeout; connections past the cap are closed at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.mllp import Ack, Connection, message, segment
from tests.support.server import PacsServer
from tests.support.wait import until

READ_TIMEOUT_S = 5
MAX_CONNECTIONS = 4
MAX_MESSAGE_KB = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           module_database_url: str) -> Iterator[PacsServer]:
    root = tmp_path_factory.mktemp("hl7")
    running = PacsServer(
        data_dir=root / "data", database_url=module_database_url, hl7=True,
        extra_args=["--dimse-processes", "1"],
        start_env={"PACS_HL7_READ_TIMEOUT": str(READ_TIMEOUT_S),
                   "PACS_HL7_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                   "PACS_HL7_MAX_MESSAGE_KB": str(MAX_MESSAGE_KB)},
    ).start()
    try:
        yield running
    finally:
        running.stop()


def msh(kind: str, control_id: str, version: str = "2.3.1") -> str:
    return segment("MSH", {3: "RIS", 4: "HOSP", 5: "PACS", 6: "RAD", 7: "20261208093000",
                           9: kind, 10: control_id, 11: "P", 12: version})


def orm(control: str, accession: str, control_id: str, **fields: dict[int, str]) -> bytes:
    """An ORM^O01; ``PID={...}`` etc. change or add fields of a segment."""
    segments = {
        "PID": {3: "HL7-PAT^^^HOSP&1.2.3&ISO", 5: "Müller^Jürgen^K^Jr^Dr", 7: "19700102",
                8: "F"},
        "PV1": {2: "O", 8: "4711^House^Gregory"},
        "ORC": {1: control, 2: f"PL-{accession}", 3: f"FL-{accession}", 5: "SC",
                7: "^^^202612101430", 18: "CT1"},
        "OBR": {1: "1", 2: f"PL-{accession}", 3: f"FL-{accession}", 4: "C1^CT Head^L",
                16: "99^Wilson^James", 18: accession, 19: f"RP-{accession}",
                20: f"SPS-{accession}", 24: "CT", 44: "P1^CT head w/o contrast^L"},
        "ZDS": {1: f"1.2.826.0.1.3680043.10.543.{abs(hash(accession)) % 10**9}^100^"
                   "Application^DICOM"},
    }
    for name, changes in fields.items():
        segments[name] = {**segments[name], **changes}
    return message(msh("ORM^O01", control_id),
                   *(segment(name, values) for name, values in segments.items()))


def orders(server: PacsServer, **params: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/orders", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


def only_order(server: PacsServer, accession: str) -> dict[str, Any]:
    (found,) = orders(server, accession_number=accession)
    return found


def audit(server: PacsServer, action: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/audit", params={"action": action}, timeout=30)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


def assert_refused(ack: Ack, code: str, *words: str) -> None:
    assert ack.code == code, ack.text
    for word in words:
        assert word in ack.reason, ack.text
    (err,) = ack.segments("ERR")
    assert "HL70357" in err[3] and err[4] == "E"


def test_orm_new_update_cancel_on_one_connection(server: PacsServer) -> None:
    with Connection(server.hl7_port) as hl7:
        created = hl7.send(orm("NW", "H-1", "MSG-1"))
        assert created.code == "AA", created.text
        assert created.field("MSA", 2) == "MSG-1"
        # the header mirrors the message's, sender and receiver swapped
        assert [created.field("MSH", n) for n in (3, 4, 5, 6)] == ["PACS", "RAD", "RIS", "HOSP"]
        assert created.field("MSH", 9) == "ACK^O01^ACK" and created.field("MSH", 12) == "2.3.1"

        order = only_order(server, "H-1")
        assert order["source"] == "hl7" and order["status"] == "scheduled"
        assert (order["PatientID"], order["IssuerOfPatientID"]) == ("HL7-PAT", "HOSP")
        assert order["PatientName"] == "Müller^Jürgen^K^Dr^Jr"  # XPN suffix, prefix swapped
        assert (order["PatientBirthDate"], order["PatientSex"]) == ("19700102", "F")
        assert order["ReferringPhysicianName"] == "House^Gregory"  # PV1-8 before OBR-16
        assert order["PlacerOrderNumberImagingServiceRequest"] == "PL-H-1"
        assert order["FillerOrderNumberImagingServiceRequest"] == "FL-H-1"
        assert order["RequestedProcedureID"] == "RP-H-1"
        assert order["RequestedProcedureDescription"] == "CT head w/o contrast"  # OBR-44.2
        assert order["StudyInstanceUID"].startswith("1.2.826.0.1.3680043.10.543.")  # ZDS-1
        (step,) = order["ScheduledProcedureStepSequence"]
        assert step["ScheduledProcedureStepID"] == "SPS-H-1" and step["Modality"] == "CT"
        assert step["ScheduledStationAETitle"] == "CT1"  # ORC-18
        assert step["ScheduledProcedureStepStartDate"] == "20261210"  # ORC-7.4
        assert step["ScheduledProcedureStepStartTime"] == "1430"
        assert step["ScheduledProcedureStepDescription"] == "CT Head"  # OBR-4.2
        assert step["ScheduledProcedureStepStatus"] == "SCHEDULED"  # ORC-5 SC
        (event,) = [e for e in audit(server, "order-create")
                    if e["detail"]["order_id"] == order["id"]]
        assert event["actor"] == "hl7:RIS@127.0.0.1"
        assert event["detail"]["accession_number"] == "H-1"

        updated = hl7.send(orm("XO", "H-1", "MSG-2", PID={5: "Doe^Jane"},
                               ORC={18: "CT2"}, OBR={20: ""}))
        assert updated.code == "AA", updated.text
        changed = only_order(server, "H-1")
        assert changed["id"] == order["id"] and changed["PatientName"] == "Doe^Jane"
        (step,) = changed["ScheduledProcedureStepSequence"]
        # no OBR-20 in the update: the step at its position keeps its id
        assert (step["ScheduledProcedureStepID"], step["ScheduledStationAETitle"]) == (
            "SPS-H-1", "CT2")

        cancelled = hl7.send(orm("CA", "H-1", "MSG-3"))
        assert cancelled.code == "AA", cancelled.text
        gone = only_order(server, "H-1")
        assert gone["status"] == "cancelled"
        assert gone["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStatus"] == (
            "CANCELED")
        assert [e["actor"] for e in audit(server, "order-cancel")
                if e["detail"]["order_id"] == order["id"]] == ["hl7:RIS@127.0.0.1"]


def test_omi_takes_its_identifiers_from_ipc(server: PacsServer) -> None:
    omi = message(
        msh("OMI^O23", "OMI-1", "2.5.1"),
        segment("PID", {3: "OMI-PAT", 5: "Smith^Ann", 7: "19800202", 8: "F"}),
        segment("ORC", {1: "NW", 2: "PL-O", 3: "FL-O"}),
        segment("TQ1", {1: "1", 7: "20261211080000"}),
        segment("OBR", {1: "1", 2: "PL-O", 3: "FL-O", 4: "M1^MR knee^L", 24: "MR"}),
        segment("IPC", {1: "O-ACC", 2: "O-RP", 3: "1.2.3.4.5.6.7", 4: "O-SPS1", 5: "MR",
                        7: "MR ROOM", 9: "MR1"}),
        segment("IPC", {1: "O-ACC", 2: "O-RP", 3: "1.2.3.4.5.6.7", 4: "O-SPS2", 5: "SR",
                        9: "WS1"}),
    )
    with Connection(server.hl7_port) as hl7:
        ack = hl7.send(omi)
    assert ack.code == "AA", ack.text
    assert ack.field("MSH", 9) == "ACK^O23^ACK" and ack.field("MSA", 2) == "OMI-1"
    order = only_order(server, "O-ACC")
    assert (order["RequestedProcedureID"], order["StudyInstanceUID"]) == (
        "O-RP", "1.2.3.4.5.6.7")
    first, second = order["ScheduledProcedureStepSequence"]
    assert (first["ScheduledProcedureStepID"], first["Modality"],
            first["ScheduledStationAETitle"], first["ScheduledStationName"]) == (
        "O-SPS1", "MR", "MR1", "MR ROOM")
    assert (second["ScheduledProcedureStepID"], second["Modality"],
            second["ScheduledStationAETitle"]) == ("O-SPS2", "SR", "WS1")
    assert first["ScheduledProcedureStepStartDate"] == "20261211"  # TQ1-7
    assert first["ScheduledProcedureStepStartTime"] == "080000"
    assert first["ScheduledProcedureStepDescription"] == "MR knee"


@pytest.mark.parametrize(("payload", "code", "words"), [
    (b"hello, this is not HL7", "AR", ["MSH"]),
    (message(msh("ADT^A01", "BAD-1"), segment("PID", {3: "X"})), "AR",
     ["ADT^A01", "not served"]),
    (orm("NW", "H-NOPID", "BAD-2", PID={3: ""}), "AE", ["PID-3", "PatientID", "required"]),
    (orm("NW", "H-BADDATE", "BAD-3", PID={7: "19701345"}), "AE", ["PID-7", "date"]),
    (orm("NW", "H-NOMOD", "BAD-4", OBR={24: ""}), "AE", ["OBR-24", "Modality"]),
    (orm("NW", "H-BADAE", "BAD-5", ORC={18: "A" * 20}), "AE", ["ScheduledStationAETitle"]),
    (orm("ZZ", "H-ZZ", "BAD-6"), "AE", ["ORC-1", "'ZZ'"]),
    (orm("XO", "H-NOSUCH", "BAD-7"), "AE", ["no order"]),
    (orm("CA", "H-NOSUCH", "BAD-8"), "AE", ["no order"]),
])
def test_a_message_that_cannot_be_served_is_answered_with_the_reason(
        server: PacsServer, payload: bytes, code: str, words: list[str]) -> None:
    with Connection(server.hl7_port) as hl7:
        ack = hl7.send(payload)
        assert_refused(ack, code, *words)
        # and the connection goes on serving
        after = hl7.send(orm("NW", f"A{abs(hash(payload)) % 10**6}", "OK"))
        assert after.code == "AA", after.text


def test_a_second_order_with_a_taken_accession_is_ae(server: PacsServer) -> None:
    with Connection(server.hl7_port) as hl7:
        assert hl7.send(orm("NW", "H-DUP", "DUP-1")).code == "AA"
        again = hl7.send(orm("NW", "H-DUP", "DUP-2",
                             ZDS={1: "1.2.826.0.1.3680043.10.543.77"}))
    assert_refused(again, "AE", "AccessionNumber 'H-DUP'")
    assert len(orders(server, accession_number="H-DUP")) == 1


def test_an_oversized_frame_is_refused_and_the_listener_goes_on(server: PacsServer) -> None:
    huge = orm("NW", "H-HUGE", "HUGE-1", OBR={13: "x" * (MAX_MESSAGE_KB * 1024 * 2)})
    with Connection(server.hl7_port) as hl7:
        hl7.sock.sendall(b"\x0b" + huge + b"\x1c\x0d")
        ack = hl7.read()
        assert_refused(ack, "AR", "larger than")
        assert ack.field("MSA", 2) == "HUGE-1"
        assert hl7.closed_by_peer()
    assert orders(server, accession_number="H-HUGE") == []
    with Connection(server.hl7_port) as hl7:
        assert hl7.send(orm("NW", "H-AFT-HUGE", "OK")).code == "AA"


def test_a_stalled_connection_blocks_no_one_and_is_closed(server: PacsServer) -> None:
    stalled = Connection(server.hl7_port, timeout=READ_TIMEOUT_S * 12)
    try:
        stalled.sock.sendall(b"\x0b" + orm("NW", "H-STALLED", "STALL-1")[:40])
        with Connection(server.hl7_port) as other:
            assert other.send(orm("NW", "H-FREE", "FREE-1")).code == "AA"
        assert only_order(server, "H-FREE")["status"] == "scheduled"
        assert stalled.closed_by_peer()  # after the read timeout, not at the socket's
    finally:
        stalled.close()
    assert orders(server, accession_number="H-STALLED") == []


def test_connections_past_the_cap_are_closed_at_once(server: PacsServer) -> None:
    held = [Connection(server.hl7_port) for _ in range(MAX_CONNECTIONS)]
    try:
        # each is being served once it answers a message
        for number, connection in enumerate(held):
            assert connection.send(orm("NW", f"H-CAP-{number}", f"CAP-{number}")).code == "AA"
        extra = Connection(server.hl7_port, timeout=READ_TIMEOUT_S * 12)
        try:
            extra.sock.sendall(b"\x0b" + orm("NW", "H-CAP-X", "CAP-X") + b"\x1c\x0d")
            assert extra.closed_by_peer()
        finally:
            extra.close()
    finally:
        for connection in held:
            connection.close()
    assert orders(server, accession_number="H-CAP-X") == []
    until("a connection served again once the others closed", lambda: _served(server))


def _served(server: PacsServer) -> bool:
    try:
        with Connection(server.hl7_port) as hl7:
            return hl7.send(orm("NW", "H-CAP-A", "CAP-AFTER")).code in {"AA", "AE"}
    except ConnectionError:
        return False
