"""``pacs serve --audit-syslog`` end to end: a real server, DCMTK peers and the review API, and a
syslog receiver the test runs on loopback (UDP, TLS, TCP). A C-STORE, a C-FIND and a QA action
arrive as DICOM Audit Messages with the schema's required elements; the server's start and stop
are Application Activity events; a restart resumes where the export stopped; a receiver that
cannot be reached neither blocks a store nor loses its event."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.support import dcmtk
from tests.support.pki import make_server_pki
from tests.support.server import PacsServer
from tests.support.syslog import (
    StreamReceiver,
    SyslogMessage,
    UdpReceiver,
    audit_message_problems,
    closed_port,
    one,
)
from tests.support.wait import until


def _study_object(message: SyslogMessage, study: str) -> bool:
    return any(item.get("ParticipantObjectID") == study for item in message.objects("110180"))


def _instances(message: SyslogMessage) -> int:
    """NumberOfInstances of the study object (its stores are grouped per batch)."""
    sop_class = one(message.xml, "ParticipantObjectIdentification/ParticipantObjectDescription/"
                                 "SOPClass")
    return int(sop_class.get("NumberOfInstances", "0"))


def test_stores_queries_and_reviews_reach_a_udp_receiver_as_dicom_audit_messages(
    tmp_path: Path, sqlite_url: str,
) -> None:
    study = make_uid("syslog-e2e", "study")
    with UdpReceiver() as receiver:
        server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                            extra_args=["--audit-syslog", f"127.0.0.1:{receiver.port}"]).start()
        try:
            started = receiver.wait_for(lambda m: "110120" in m.type_codes, "the start event")
            dcmtk.store_datasets(server.dimse_port, [
                ct_instance(PatientID="SYS-1", PatientName="Syslog^Ann",
                            StudyInstanceUID=study, InstanceNumber=n) for n in (1, 2)
            ], workdir=tmp_path, aet="MODALITY1")
            until("both instances' stores", lambda: sum(
                _instances(m) for m in receiver.messages
                if m.event_id == "110104" and _study_object(m, study)) == 2)
            stores = next(m for m in receiver.messages
                          if m.event_id == "110104" and _study_object(m, study))
            result, _ = dcmtk.findscu(server.dimse_port, [
                "QueryRetrieveLevel=STUDY", "PatientID=SYS-1", "StudyInstanceUID"],
                workdir=tmp_path)
            assert result.returncode == 0, dcmtk.status_lines(result)
            query = receiver.wait_for(lambda m: m.event_id == "110112", "the C-FIND")
            answer = httpx.post(f"{server.base_url}/api/studies/{study}/reject",
                                json={"reason": "wrong patient"}, timeout=30)
            assert answer.status_code == 200, answer.text
            reject = receiver.wait_for(lambda m: m.action() == "reject", "the rejection")
        finally:
            assert server.stop() == 0
        stopped = receiver.wait_for(lambda m: "110121" in m.type_codes, "the stop event")

    for message in (started, stores, query, reject, stopped):
        assert audit_message_problems(message.xml) == [], message.msg
        assert message.facility == 10
        assert message.msgid == "DICOM+RFC3881"
    assert stores.event["EventActionCode"] == "C"
    source = one(stores.xml, "ActiveParticipant[@UserIsRequestor='true']")
    assert (source.get("UserID") or "").startswith("dimse:MODALITY1@127.0.0.1:")
    assert source.get("NetworkAccessPointID") == "127.0.0.1"
    assert source.get("AlternativeUserID") == "AETITLES=MODALITY1"
    assert [p.get("ParticipantObjectID") for p in stores.objects("2")] == ["SYS-1"]
    assert query.objects("10")[0].get("ParticipantObjectID") == "C-FIND STUDY"
    assert (reject.event_id, reject.event["EventActionCode"]) == ("110103", "D")
    assert _study_object(reject, study)
    assert (one(reject.xml, "ActiveParticipant[@UserIsRequestor='true']").get("UserID")
            or "").startswith("http:")


def test_over_tls_a_restart_sends_what_was_audited_meanwhile_and_nothing_twice(
    tmp_path: Path, sqlite_url: str,
) -> None:
    pki = make_server_pki(tmp_path / "pki")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.cert, pki.key)
    first, later = make_uid("syslog-tls", "first"), make_uid("syslog-tls", "later")
    with StreamReceiver(tls=tls) as receiver:
        server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url, extra_args=[
            "--tls-ca", str(pki.ca), "--audit-syslog", f"127.0.0.1:{receiver.port},tls"])
        server.start()
        try:
            dcmtk.store_datasets(server.dimse_port, [ct_instance(StudyInstanceUID=first)],
                                 workdir=tmp_path)
            receiver.wait_for(lambda m: _study_object(m, first), "the first store")
        finally:
            assert server.stop() == 0
        # audited while the server is down: an import writes a store row
        path = write_part10(ct_instance(StudyInstanceUID=later), tmp_path / "later.dcm")
        imported = server.cli("import", str(path))
        assert imported.returncode == 0, imported.stderr
        server.start()
        try:
            resumed = receiver.wait_for(lambda m: _study_object(m, later), "the import")
        finally:
            server.stop()
        stores_of_first = [m for m in receiver.messages
                           if m.event_id == "110104" and _study_object(m, first)]
        assert receiver.handshake_failures == 0

    assert audit_message_problems(resumed.xml) == []
    assert one(resumed.xml, "ActiveParticipant[@UserIsRequestor='true']").get(
        "UserID") == "import"
    assert len(stores_of_first) == 1


def test_an_unreachable_receiver_does_not_block_a_store_and_gets_its_event_later(
    tmp_path: Path, sqlite_url: str,
) -> None:
    port = closed_port()
    study = make_uid("syslog-down", "study")
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--audit-syslog", f"127.0.0.1:{port},tcp"]).start()
    try:
        dcmtk.store_datasets(server.dimse_port, [ct_instance(StudyInstanceUID=study)],
                             workdir=tmp_path)  # every store succeeds
        audit = httpx.get(f"{server.base_url}/api/audit", params={"study": study}, timeout=30)
        assert [event["action"] for event in audit.json()] == ["store"]

        with StreamReceiver(port=port) as receiver:
            message = receiver.wait_for(lambda m: _study_object(m, study), "the store, late")
    finally:
        server.stop()
    assert audit_message_problems(message.xml) == []
    assert "audit syslog: cannot send to 127.0.0.1" in server.log()
