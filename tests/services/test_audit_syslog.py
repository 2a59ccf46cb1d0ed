"""The audit trail exported to syslog, on a real index with receivers the tests run on loopback:
every kind of row becomes a DICOM Audit Message (PS3.15 A.5) with the schema's required
elements behind an RFC 5424 header; outcomes map to the outcome indicator and severity; the
cursor resumes after a restart without replaying history; an unreachable receiver keeps the
events for later; UDP datagrams stay whole under the size bound; TLS verifies the receiver."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pacs.services.audit_export import AuditExporter
from pacs.services.audit_message import Actor, AuditSource
from pacs.services.syslog import MAX_UDP_BYTES, SyslogTarget, Transport, sender_for
from pacs.settings import Settings
from storage.index import Index
from tests.factories.datasets import ct_instance, make_uid
from tests.support.index import index_datasets
from tests.support.pki import issue, make_ca, server_cert
from tests.support.syslog import (
    StreamReceiver,
    SyslogMessage,
    UdpReceiver,
    audit_message_problems,
    closed_port,
    detail_values,
    one,
)
from tests.support.wait import until

STUDY = make_uid("syslog", "study")
SOURCE = AuditSource(ae_title="PACS", hostname="pacs.example")


_MADE: list[AuditExporter] = []


def _exporter(index: Index, target: SyslogTarget, cursor: Path, **tls: Any) -> AuditExporter:
    exporter = AuditExporter(index=index, sender=sender_for(target, **tls), source=SOURCE,
                             cursor_file=cursor, max_bytes=target.max_bytes, target=str(target))
    _MADE.append(exporter)
    return exporter


@pytest.fixture(autouse=True)
def _close_senders() -> Iterator[None]:
    yield
    while _MADE:
        _MADE.pop().sender.close()


def _write(index: Index, *rows: dict[str, Any]) -> None:
    with index.unit_of_work(write=True) as repository:
        for row in rows:
            repository.audit.append(**{"study_instance_uid": None, "detail": None, **row})


def _archive(index: Index) -> None:
    index_datasets(index, [ct_instance(PatientID="PID-1", PatientName="Doe^Jane",
                                       StudyInstanceUID=STUDY)])


@pytest.fixture
def udp() -> Iterator[UdpReceiver]:
    with UdpReceiver() as receiver:
        yield receiver


def _received(receiver: UdpReceiver | StreamReceiver, count: int) -> list[SyslogMessage]:
    messages: list[SyslogMessage] = until(f"{count} syslog messages", lambda: (
        m := receiver.messages) and len(m) >= count and m)
    return messages


# (action, outcome, study?, detail) -> (EventID, EventActionCode, EventOutcomeIndicator)
ROWS: list[tuple[dict[str, Any], tuple[str, str, str]]] = [
    ({"actor": "dimse:CT1@10.0.0.5 tls:CN=ct1", "action": "store", "outcome": "stored",
      "study_instance_uid": STUDY, "detail": {"sop_instance_uid": "1.2.3.1"}},
     ("110104", "C", "0")),
    ({"actor": "http:token:ohif@10.0.0.7", "action": "query", "outcome": "2 matches",
      "detail": {"how": "QIDO-RS", "level": "STUDY", "matches": 2,
                 "keys": {"PatientName": "Doe*"}}},
     ("110112", "E", "0")),
    ({"actor": "dimse:WS1@10.0.0.9", "action": "retrieve",
      "outcome": "1 completed, 0 failed, 0 warning", "study_instance_uid": STUDY,
      "detail": {"how": "C-MOVE to DEST", "completed": 1, "failed": 0}},
     ("110104", "R", "0")),
    ({"actor": "http:token:qa@10.0.0.8", "action": "reject", "outcome": "rejected",
      "study_instance_uid": STUDY, "detail": {"from": "archived", "reason": "wrong patient"}},
     ("110103", "D", "0")),
    ({"actor": "http:token:qa@10.0.0.8", "action": "correct", "outcome": "archived",
      "study_instance_uid": STUDY, "detail": {"changes": {"PatientName": {"old": "A",
                                                                          "new": "B"}}}},
     ("110103", "U", "0")),
    ({"actor": "pacs:purge", "action": "delete", "outcome": "purged",
      "study_instance_uid": make_uid("syslog", "gone"), "detail": {"files": 3}},
     ("110105", "D", "0")),
    ({"actor": "cli:token", "action": "token-create", "outcome": "created",
      "detail": {"name": "ohif", "role": "viewer"}},
     ("110113", "E", "0")),
    ({"actor": "http:10.0.0.66", "action": "auth-failed", "outcome": "invalid token"},
     ("110114", "E", "4")),
    ({"actor": "http:token:ohif@10.0.0.7", "action": "permission-denied",
      "outcome": "403 role viewer may not reject", "detail": {"path": "/api/studies/x"}},
     ("110113", "E", "4")),
    ({"actor": "dimse:EVIL@10.0.0.66", "action": "association-rejected",
      "outcome": "calling AE title not recognised", "detail": {"count": 3}},
     ("110113", "E", "4")),
    ({"actor": "http:10.0.0.66", "action": "http-refused", "outcome": "431 headers too large",
      "detail": {"client": "10.0.0.66", "count": 1}},
     ("110113", "E", "4")),
    ({"actor": "http:token:admin@10.0.0.2", "action": "mpps-create", "outcome": "done",
      "study_instance_uid": STUDY},
     ("110103", "U", "0")),
    ({"actor": "http:token:admin@10.0.0.2", "action": "settings-change", "outcome": "done"},
     ("110113", "E", "0")),
]


def test_every_kind_of_row_is_a_dicom_audit_message_behind_an_rfc5424_header(
    index: Index, udp: UdpReceiver, tmp_path: Path,
) -> None:
    _archive(index)
    exporter = _exporter(index, SyslogTarget("127.0.0.1", udp.port), tmp_path / "cursor")
    assert exporter.export_once() == 0  # the first start begins after the newest row
    _write(index, *(row for row, _ in ROWS))

    assert exporter.export_once() == len(ROWS)

    messages = {m.action(): m for m in _received(udp, len(ROWS))}
    assert len(messages) == len(ROWS)
    for row, (event_id, action_code, outcome) in ROWS:
        message = messages[row["action"]]
        assert audit_message_problems(message.xml) == [], row["action"]
        assert (message.event_id, message.event["EventActionCode"],
                message.event["EventOutcomeIndicator"]) == (event_id, action_code, outcome), \
            row["action"]
        # RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG; facility 10,
        # notice for a success, warning for a failure
        assert message.version == 1
        assert message.facility == 10
        assert message.severity == (5 if outcome == "0" else 4)
        assert (message.app_name, message.procid, message.msgid) == (
            "pacs", str(os.getpid()), "DICOM+RFC3881")
        assert message.structured_data == "-"
        assert message.bom
        assert datetime.fromisoformat(message.timestamp.replace("Z", "+00:00")).tzinfo
        users = [p.get("UserID") for p in message.xml.findall("ActiveParticipant")]
        assert row["actor"] in users, row["action"]
        assert one(message.xml, "AuditSourceIdentification").get("AuditSourceID") == "PACS"

    store = messages["store"]
    study = store.objects("110180")[0]
    assert study.get("ParticipantObjectID") == STUDY
    assert (study.get("ParticipantObjectTypeCode"), study.get(
        "ParticipantObjectTypeCodeRole")) == ("2", "3")
    patient = store.objects("2")[0]
    assert patient.get("ParticipantObjectID") == "PID-1"
    assert patient.findtext("ParticipantObjectName") == "Doe^Jane"
    source = one(store.xml, "ActiveParticipant[@UserIsRequestor='true']")
    assert source.get("AlternativeUserID") == "AETITLES=CT1"
    assert source.get("NetworkAccessPointID") == "10.0.0.5"
    assert source.get("UserName") == "CN=ct1"
    assert one(source, "RoleIDCode").get("csd-code") == "110153"

    query = messages["query"].objects("10")[0]
    assert query.get("ParticipantObjectID") == "QIDO-RS STUDY"
    assert base64.b64decode(one(query, "ParticipantObjectQuery").text or "") == b"PatientName=Doe*"

    move = messages["retrieve"]
    destination = one(move.xml, "ActiveParticipant/RoleIDCode[@csd-code='110152']/..")
    assert destination.get("UserID") == "DEST"

    assert messages["reject"].objects("110180")[0].get("ParticipantObjectDataLifeCycle") == "14"
    assert messages["delete"].objects("110180")[0].get("ParticipantObjectDataLifeCycle") == "15"
    assert messages["delete"].objects("2") == []  # the purged study's patient is not known

    assert "110137" in messages["token-create"].type_codes
    token = messages["token-create"].objects("11")[0]
    assert token.get("ParticipantObjectID") == "token:ohif"
    assert "created" in detail_values(token)["Alert Description"]

    assert messages["auth-failed"].type_codes[0] == "110122"
    assert messages["association-rejected"].type_codes[0] == "110126"
    node = messages["association-rejected"].objects("110182")[0]
    assert node.get("ParticipantObjectID") == "10.0.0.66"
    assert "3 times" in detail_values(node)["Alert Description"]
    assert messages["permission-denied"].type_codes[0] == "110132"


def test_failure_rows_map_to_the_outcome_indicator_and_warning_severity(
    index: Index, udp: UdpReceiver, tmp_path: Path,
) -> None:
    exporter = _exporter(index, SyslogTarget("127.0.0.1", udp.port), tmp_path / "cursor")
    exporter.export_once()
    failures = {
        "0 completed, 2 failed, 0 warning": "8",  # nothing sent: serious
        "3 completed, 1 failed, 0 warning": "4",  # some sent: minor
        "refused": "8",
    }
    _write(index, *({"actor": "dimse:WS@127.0.0.1", "action": "retrieve", "outcome": outcome,
                     "study_instance_uid": STUDY} for outcome in failures),
           {"actor": "pacs:route:WS1", "action": "route", "outcome": "failed, will retry",
            "study_instance_uid": STUDY, "detail": {"error": "connection refused"}},
           {"actor": "http:127.0.0.1", "action": "query", "outcome": "refused",
            "detail": {"how": "QIDO-RS", "reason": "bad date"}})

    exporter.export_once()

    messages = _received(udp, 5)
    found = {m.xml.findtext("EventIdentification/EventOutcomeDescription"):
             m.event["EventOutcomeIndicator"] for m in messages if m.action() == "retrieve"}
    assert found == failures
    route = next(m for m in messages if m.action() == "route")
    assert route.event["EventOutcomeIndicator"] == "4"  # it will be retried
    assert next(m for m in messages if m.action() == "query").event[
        "EventOutcomeIndicator"] == "8"
    assert all(m.severity == 4 and m.priority == 84 for m in messages)


def test_the_stores_of_one_transfer_are_one_message(
    index: Index, udp: UdpReceiver, tmp_path: Path,
) -> None:
    exporter = _exporter(index, SyslogTarget("127.0.0.1", udp.port), tmp_path / "cursor")
    exporter.export_once()
    uids = [f"1.2.3.{n}" for n in range(3)]
    _write(index, *({"actor": "dimse:CT1@10.0.0.5", "action": "store", "outcome": "stored",
                     "study_instance_uid": STUDY, "detail": {"sop_instance_uid": uid}}
                    for uid in uids),
           {"actor": "dimse:CT1@10.0.0.5", "action": "store", "outcome": "already present",
            "study_instance_uid": STUDY, "detail": {"sop_instance_uid": uids[0]}})

    assert exporter.export_once() == 4

    messages = _received(udp, 2)
    created = next(m for m in messages if m.event["EventActionCode"] == "C")
    sop_class = one(created.xml, "ParticipantObjectIdentification/ParticipantObjectDescription/"
                                 "SOPClass")
    assert sop_class.get("NumberOfInstances") == "3"
    assert [i.get("UID") for i in sop_class.findall("Instance")] == uids
    again = next(m for m in messages if m.event["EventActionCode"] == "R")  # already held
    assert one(again.objects("110180")[0],
        "ParticipantObjectDescription/SOPClass").get("NumberOfInstances") == "1"


def test_a_restart_resumes_after_the_last_batch_and_the_first_start_replays_nothing(
    index: Index, tmp_path: Path,
) -> None:
    cursor = tmp_path / "cursor"
    with StreamReceiver() as receiver:
        target = SyslogTarget("127.0.0.1", receiver.port, Transport.TCP)
        _write(index, {"actor": "cli", "action": "accept", "outcome": "history",
                       "study_instance_uid": STUDY})
        first = _exporter(index, target, cursor)
        assert first.export_once() == 0  # history is not replayed
        _write(index, {"actor": "cli", "action": "accept", "outcome": "one",
                       "study_instance_uid": STUDY})
        assert first.export_once() == 1
        first.sender.close()
        _write(index, *({"actor": "cli", "action": "accept", "outcome": outcome,
                         "study_instance_uid": STUDY} for outcome in ("two", "three")))

        again = _exporter(index, target, cursor)  # a restart: the same cursor file
        assert again.export_once() == 2
        assert again.export_once() == 0
        messages = _received(receiver, 3)
        again.sender.close()

    assert [m.xml.findtext("EventIdentification/EventOutcomeDescription")
            for m in messages] == ["one", "two", "three"]
    with index.unit_of_work() as repository:
        assert json.loads(cursor.read_text())["after"] == repository.audit_feed.newest_id()


def test_an_unreachable_receiver_keeps_the_events_in_the_index_until_it_answers(
    index: Index, tmp_path: Path,
) -> None:
    port = closed_port()
    exporter = _exporter(index, SyslogTarget("127.0.0.1", port, Transport.TCP),
                         tmp_path / "cursor")
    exporter.export_once()
    before = json.loads((tmp_path / "cursor").read_text())
    _write(index, {"actor": "dimse:CT1@127.0.0.1", "action": "store", "outcome": "stored",
                   "study_instance_uid": STUDY})

    with pytest.raises(OSError):
        exporter.export_once()
    assert json.loads((tmp_path / "cursor").read_text()) == before  # not moved

    with StreamReceiver(port=port) as receiver:
        assert exporter.export_once() == 1
        message = receiver.wait_for(lambda m: m.action() == "store")
        exporter.sender.close()
    assert message.event_id == "110104"


def test_the_exporter_thread_retries_and_delivers_once_the_receiver_is_up(
    index: Index, tmp_path: Path,
) -> None:
    port = closed_port()
    exporter = _exporter(index, SyslogTarget("127.0.0.1", port, Transport.TCP),
                         tmp_path / "cursor")
    exporter.start()
    try:
        _write(index, {"actor": "http:token:qa@127.0.0.1", "action": "accept",
                       "outcome": "archived", "study_instance_uid": STUDY})
        with StreamReceiver(port=port) as receiver:
            accepted = receiver.wait_for(lambda m: m.action() == "accept", "the accept")
            started = receiver.wait_for(lambda m: m.event_id == "110100", "the start event")
            exporter.stop()
            stopped = receiver.wait_for(lambda m: "110121" in m.type_codes, "the stop event")
    finally:
        exporter.stop()
    assert audit_message_problems(accepted.xml) == []
    assert started.type_codes == ["110120"]
    for message in (started, stopped):
        assert audit_message_problems(message.xml) == []
        application = one(message.xml, "ActiveParticipant/RoleIDCode[@csd-code='110150']/..")
        assert application.get("AlternativeUserID") == "AETITLES=PACS"


def test_a_udp_datagram_stays_under_the_bound_and_whole_when_the_details_are_huge(
    index: Index, udp: UdpReceiver, tmp_path: Path,
) -> None:
    exporter = _exporter(index, SyslogTarget("127.0.0.1", udp.port), tmp_path / "cursor")
    exporter.export_once()
    _write(index, {"actor": "http:token:qa@127.0.0.1", "action": "reject",
                   "outcome": "rejected", "study_instance_uid": STUDY,
                   "detail": {"reason": "x" * 100_000}})

    exporter.export_once()

    message = _received(udp, 1)[0]
    assert len(message.raw) <= MAX_UDP_BYTES
    assert audit_message_problems(message.xml) == []  # whole XML: it parses
    detail = detail_values(message.objects("110180")[0])["Detail"]
    assert detail.endswith("...")


def test_tls_verifies_the_receiver_and_presents_the_client_certificate(
    index: Index, tmp_path: Path,
) -> None:
    ca = make_ca("audit repository CA")
    cert, key = server_cert(ca).write(tmp_path, "receiver")
    ca_file = ca.write_cert(tmp_path / "ca.pem")
    client_cert, client_key = issue(ca, "pacs.example", usage="both").write(tmp_path, "pacs")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.load_verify_locations(ca_file)
    server.verify_mode = ssl.CERT_REQUIRED  # mutual authentication, as ATNA asks

    with StreamReceiver(tls=server) as receiver:
        target = SyslogTarget("127.0.0.1", receiver.port, Transport.TLS)
        exporter = _exporter(index, target, tmp_path / "cursor", ca_file=ca_file,
                             cert_file=client_cert, key_file=client_key)
        exporter.export_once()
        _write(index, {"actor": "cli", "action": "accept", "outcome": "archived",
                       "study_instance_uid": STUDY})
        assert exporter.export_once() == 1
        message = receiver.wait_for(lambda m: m.action() == "accept")
        exporter.sender.close()
        assert receiver.peer_certificates and receiver.peer_certificates[0] is not None
    assert audit_message_problems(message.xml) == []

    stranger = make_ca("another CA")
    other_ca = stranger.write_cert(tmp_path / "other-ca.pem")
    with StreamReceiver(tls=server) as receiver:
        target = SyslogTarget("127.0.0.1", receiver.port, Transport.TLS)
        exporter = _exporter(index, target, tmp_path / "cursor-2", ca_file=other_ca)
        exporter.export_once()
        _write(index, {"actor": "cli", "action": "accept", "outcome": "archived",
                       "study_instance_uid": STUDY})
        with pytest.raises(ssl.SSLCertVerificationError):
            exporter.export_once()
        assert receiver.raw == []


@pytest.mark.postgres
def test_a_row_that_commits_after_a_later_one_is_still_sent(
    postgres_url: str, udp: UdpReceiver, tmp_path: Path,
) -> None:
    index = Index(postgres_url)
    index.upgrade()
    try:
        exporter = _exporter(index, SyslogTarget("127.0.0.1", udp.port), tmp_path / "cursor")
        exporter.export_once()
        with index.unit_of_work(write=True) as slow:
            slow.audit.append(actor="cli", action="accept", outcome="slow")  # takes id n
            _write(index, {"actor": "cli", "action": "accept", "outcome": "fast"})  # n + 1
            assert exporter.export_once() == 1
            assert exporter.cursor is not None and len(exporter.cursor.holes) == 1
        assert exporter.export_once() == 1  # the skipped id, committed since
        assert exporter.cursor.holes == {}
        messages = _received(udp, 2)
    finally:
        index.dispose()
    assert [m.xml.findtext("EventIdentification/EventOutcomeDescription")
            for m in messages] == ["fast", "slow"]


@pytest.mark.parametrize(("text", "protocol", "name", "address", "subject"), [
    ("dimse:CT1@10.0.0.5", "dimse", "CT1", "10.0.0.5", None),
    ("dimse:CT1@10.0.0.5:40112", "dimse", "CT1", "10.0.0.5", None),
    ("dicomweb:[::1]:40112", "dicomweb", None, "::1", None),
    ("dimse:CT 1@10.0.0.5 tls:CN=ct1,O=Site", "dimse", "CT 1", "10.0.0.5", "CN=ct1,O=Site"),
    ("http:token:ohif@10.0.0.7", "http", "token:ohif", "10.0.0.7", None),
    ("http:oidc:jane@example.org@::1", "http", "oidc:jane@example.org", "::1", None),
    ("http:10.0.0.7", "http", None, "10.0.0.7", None),
    ("dimse:CT1", "dimse", "CT1", None, None),
    ("cli", "cli", None, None, None),
    ("pacs:route:WS1", "pacs", "route:WS1", None, None),
])
def test_actors_are_read_back_from_the_trail(
    text: str, protocol: str, name: str | None, address: str | None, subject: str | None,
) -> None:
    actor = Actor.parse(text)
    assert (actor.protocol, actor.name, actor.address, actor.tls_subject) == (
        protocol, name, address, subject)


@pytest.mark.parametrize(("value", "normalized"), [
    ("127.0.0.1:514", "127.0.0.1:514"),
    ("audit.example.org:6514,TLS", "audit.example.org:6514,tls"),
    ("[::1]:514,tcp", "[::1]:514,tcp"),
    ("localhost:514,udp", "localhost:514"),
])
def test_the_setting_is_validated_and_normalized(value: str, normalized: str) -> None:
    assert Settings(audit_syslog=value).audit_syslog == normalized


@pytest.mark.parametrize("value", ["audit.example.org", "host:0", "host:514,sctp", "host:x"])
def test_a_bad_audit_syslog_flag_exits_2_with_one_line(value: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--audit-syslog", value], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pacs: error: --audit-syslog: ")


def test_one_tls_connection_carries_many_batches_and_a_closed_one_is_opened_again(
    index: Index, tmp_path: Path,
) -> None:
    pki_ca = make_ca("audit repository CA")
    cert, key = server_cert(pki_ca).write(tmp_path, "receiver")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.3: session tickets after the
    server.load_cert_chain(cert, key)  # handshake make the client's socket readable
    ca_file = pki_ca.write_cert(tmp_path / "ca.pem")
    first = StreamReceiver(tls=server).start()
    port = first.port
    exporter = _exporter(index, SyslogTarget("127.0.0.1", port, Transport.TLS),
                         tmp_path / "cursor", ca_file=ca_file)
    exporter.export_once()
    try:
        for outcome in ("one", "two", "three"):
            _write(index, {"actor": "cli", "action": "accept", "outcome": outcome,
                           "study_instance_uid": STUDY})
            assert exporter.export_once() == 1
        _received(first, 3)
        assert first.connections == 1
    finally:
        first.stop()  # the receiver restarts: it closes the connection
    with StreamReceiver(tls=server, port=port) as second:
        _write(index, {"actor": "cli", "action": "accept", "outcome": "four",
                       "study_instance_uid": STUDY})
        assert exporter.export_once() == 1
        message = second.wait_for(lambda m: True, "the message after the restart")
    assert message.xml.findtext("EventIdentification/EventOutcomeDescription") == "four"
