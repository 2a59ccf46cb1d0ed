"""The audit trail tells the truth about queries and retrievals, against a real ``pacs serve``:
C-FIND and QIDO-RS are recorded with level, number of matches, actor and keys; a refused
C-MOVE is recorded as refused with its reason and 0 instances; C-MOVE and C-GET record the
sub-operations that completed or failed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.server import PacsServer
from tests.support.wait import until

STUDY = make_uid("audit", "study")
OTHER = make_uid("audit", "other-study")


@dataclass
class Archive:
    server: PacsServer
    destination: dcmtk.Storescp
    workdir: Path

    def events(self, **params: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.server.base_url}/api/audit", params=params, timeout=10)
        assert answer.status_code == 200, answer.text
        events: list[dict[str, Any]] = answer.json()
        return events


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory,
            module_database_url: str) -> Iterator[Archive]:
    workdir = tmp_path_factory.mktemp("audit")
    destination = dcmtk.Storescp(workdir / "received", ae_title="DEST").start()
    server = PacsServer(data_dir=workdir / "data", database_url=module_database_url,
                        extra_args=["--peer", destination.peer]).start()
    try:
        dcmtk.store_datasets(server.dimse_port, [
            ct_instance(PatientID="AUD-1", PatientName="Audit^One", StudyInstanceUID=STUDY,
                        InstanceNumber=n) for n in (1, 2)
        ] + [ct_instance(PatientID="AUD-2", PatientName="Audit^Two", StudyInstanceUID=OTHER)],
            workdir=workdir)
        yield Archive(server, destination, workdir)
    finally:
        server.stop()
        destination.stop()


def _find(events: list[dict[str, Any]], **wanted: Any) -> dict[str, Any] | None:
    """The newest event whose fields (or ``detail`` fields, as ``detail_x``) match."""
    for event in events:
        fields = {**event, **{f"detail_{k}": v for k, v in event["detail"].items()}}
        if all(fields.get(key) == value for key, value in wanted.items()):
            return event
    return None


def test_c_find_is_audited_with_level_matches_actor_and_keys(archive: Archive) -> None:
    result, responses = dcmtk.findscu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", "PatientID=AUD-1",
                                    "StudyInstanceUID"], workdir=archive.workdir)
    assert result.returncode == 0, dcmtk.status_lines(result)
    assert len(responses) == 1

    event = until("the C-FIND in the audit trail", lambda: _find(
        archive.events(action="query"), detail_how="C-FIND", detail_keys={"PatientID": "AUD-1"}))
    assert event["actor"] == "dimse:FINDSCU@127.0.0.1"
    assert event["outcome"] == "1 matches"
    assert event["detail"]["level"] == "STUDY"
    assert event["detail"]["matches"] == 1


def test_qido_rs_is_audited_with_level_matches_actor_and_keys(archive: Archive) -> None:
    answer = httpx.get(f"{archive.server.base_url}/dicom-web/studies",
                       params={"PatientName": "Audit*"}, timeout=10)
    assert answer.status_code == 200
    assert len(answer.json()) == 2

    event = until("the QIDO-RS search in the audit trail", lambda: _find(
        archive.events(action="query"), detail_how="QIDO-RS",
        detail_keys={"PatientName": "Audit*"}))
    assert event["actor"] == "http:127.0.0.1"
    assert event["detail"]["level"] == "STUDY"
    assert event["detail"]["matches"] == 2

    answer = httpx.get(f"{archive.server.base_url}/dicom-web/studies/{STUDY}/series",
                       timeout=10)
    assert answer.status_code == 200
    event = until("the series search in the audit trail", lambda: _find(
        archive.events(action="query"), detail_how="QIDO-RS",
        detail_keys={"StudyInstanceUID": STUDY}))
    assert event["detail"]["level"] == "SERIES"
    assert event["detail"]["matches"] == 1


def test_a_refused_qido_rs_search_is_audited_as_refused(archive: Archive) -> None:
    answer = httpx.get(f"{archive.server.base_url}/dicom-web/studies",
                       params={"StudyDate": "2024-13-45"}, timeout=10)
    assert answer.status_code == 400

    event = until("the refused search in the audit trail", lambda: _find(
        archive.events(action="query"), detail_how="QIDO-RS", outcome="refused"))
    assert event["actor"] == "http:127.0.0.1"
    assert event["detail"]["matches"] == 0
    assert event["detail"]["reason"]


def test_a_c_move_to_an_unknown_ae_is_audited_as_refused_with_no_instance(
    archive: Archive,
) -> None:
    result = dcmtk.movescu(archive.server.dimse_port,
                           ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"],
                           destination="NOWHERE")
    assert "Refused: MoveDestinationUnknown" in dcmtk.status_lines(result)

    events = archive.events(action="retrieve")
    refused = _find(events, detail_how="C-MOVE to NOWHERE")
    assert refused is not None, events
    assert refused["outcome"] == "refused"
    assert refused["actor"] == "dimse:MOVESCU@127.0.0.1"
    assert refused["detail"]["instances"] == 0
    assert refused["detail"]["status"] == "0xA801"
    assert "NOWHERE" in refused["detail"]["reason"]
    assert [e for e in events if e["detail"].get("how") == "C-MOVE to NOWHERE"] == [refused]


def test_c_move_and_c_get_are_audited_with_their_sub_operation_counts(
    archive: Archive,
) -> None:
    moved = dcmtk.movescu(archive.server.dimse_port,
                          ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"],
                          destination="DEST")
    assert moved.returncode == 0, dcmtk.status_lines(moved)
    got = dcmtk.getscu(archive.server.dimse_port,
                       ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={OTHER}"],
                       output=archive.workdir / "got")
    assert got.returncode == 0, dcmtk.status_lines(got)

    events = archive.events(action="retrieve")
    move = _find(events, detail_how="C-MOVE to DEST", study_instance_uid=STUDY)
    assert move is not None, events
    assert move["outcome"] == "2 completed, 0 failed, 0 warning"
    assert move["detail"]["status"] == "0x0000"
    get = _find(events, detail_how="C-GET", study_instance_uid=OTHER)
    assert get is not None, events
    assert get["outcome"] == "1 completed, 0 failed, 0 warning"
    assert get["actor"] == "dimse:GETSCU@127.0.0.1"


def test_pacs_audit_lists_queries_and_they_can_be_turned_off(
    tmp_path: Path, sqlite_url: str,
) -> None:
    """``PACS_AUDIT_QUERIES=false`` records none; on (the default), a stop writes every
    queued query event before the server exits."""
    counts = {}
    for setting in ("true", "false"):
        server = PacsServer(data_dir=tmp_path / f"data-{setting}",
                            database_url=f"{sqlite_url}-{setting}",
                            start_env={"PACS_AUDIT_QUERIES": setting}).start()
        try:
            for _ in range(3):
                answer = httpx.get(f"{server.base_url}/dicom-web/studies",
                                   params={"PatientID": "NOBODY"}, timeout=10)
                assert answer.status_code == 200
        finally:
            assert server.stop() == 0
        listed = server.cli("audit", "--action", "query")
        assert listed.returncode == 0, listed.stderr
        counts[setting] = [line for line in listed.stdout.splitlines() if " query " in line]
    assert len(counts["true"]) == 3, counts
    assert all("http:127.0.0.1" in line and "0 matches" in line and "level=STUDY" in line
               for line in counts["true"])
    assert counts["false"] == []
