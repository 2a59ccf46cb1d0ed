"""Routing of archived, stable studies to workstations (DCMTK storescp) as jobs in the index:
delivery, retries while the peer is down, resumption after a restart, no duplicate sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom

from storage.index import Index
from storage.index.models import route_job
from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.support import dcmtk
from tests.support.server import PacsServer, free_port
from tests.support.wait import until

ROUTE_ENV = {"PACS_ROUTE_RETRY_SECONDS": "0.3"}


def _jobs(server: PacsServer, study: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/jobs", params={"study": study}, timeout=30)
    assert answer.status_code == 200
    jobs: list[dict[str, Any]] = answer.json()
    return jobs


def _store(server: PacsServer, workdir: Path, study: str, count: int, patient: str) -> list[str]:
    folder = workdir / f"sent-{study[-8:]}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_part10(ct_instance(PatientID=patient, PatientName="Route^Me",
                                      StudyInstanceUID=study, InstanceNumber=n),
                          folder / f"{n}.dcm") for n in range(1, count + 1)]
    result = dcmtk.storescu(server.dimse_port, files, workdir=workdir)
    assert dcmtk.successes(result) == count, dcmtk.status_lines(result)
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _received(peer: dcmtk.Storescp) -> list[str]:
    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                  for p in peer.files())


def _server(tmp_path: Path, url: str, peer: str, *extra: str) -> PacsServer:
    return PacsServer(
        data_dir=tmp_path / "data", database_url=url,
        extra_args=["--peer", peer, "--route", f"*={peer.split('=')[0]}",
                    "--stable-seconds", "0.5", *extra],
        start_env=ROUTE_ENV,
    )


def test_a_stable_archived_study_is_delivered_once(
    tmp_path: Path, database_url: str, workstation: dcmtk.Storescp
) -> None:
    server = _server(tmp_path, database_url, workstation.peer).start()
    try:
        study = make_uid("route", "delivered")
        sent = _store(server, tmp_path, study, 3, "ROUTE-1")
        job = until("the job is done",
                     lambda: [j for j in _jobs(server, study) if j["state"] == "done"])[0]
        assert job["destination"] == "WS1" and job["sent"] == 3 and job["attempts"] == 1
        assert _received(workstation) == sorted(sent)

        # after a restart, a second study is routed; the first is not sent again
        assert server.stop() == 0
        server.start()
        later = make_uid("route", "later")
        more = _store(server, tmp_path, later, 1, "ROUTE-2")
        until("the second job is done",
               lambda: [j for j in _jobs(server, later) if j["state"] == "done"])
        assert len(_jobs(server, study)) == 1
        assert _received(workstation) == sorted(sent + more)
        audit = httpx.get(f"{server.base_url}/api/audit", params={"study": study}).json()
        assert any(e["action"] == "route" and e["outcome"] == "sent" for e in audit)
    finally:
        server.stop()


def test_a_peer_that_is_down_gets_the_study_once_it_is_up(
    tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    peer = dcmtk.Storescp(tmp_path / "late", ae_title="LATE", port=port)
    server = _server(tmp_path, sqlite_url, f"LATE=127.0.0.1:{port}").start()
    try:
        study = make_uid("route", "down")
        sent = _store(server, tmp_path, study, 2, "ROUTE-3")
        failed = until("the job failed twice", lambda: [
            j for j in _jobs(server, study) if j["state"] == "failed" and j["attempts"] >= 2])
        assert "cannot associate with LATE" in failed[0]["last_error"]
        assert failed[0]["next_attempt_at"] is not None  # will retry
        # ingest goes on while the peer is down
        other = make_uid("route", "meanwhile")
        _store(server, tmp_path, other, 1, "ROUTE-4")
        peer.start()
        until("the job is done",
               lambda: [j for j in _jobs(server, study) if j["state"] == "done"])
        received = until("both studies arrived", lambda: len(peer.files()) == 3 and peer.files())
        uids = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                      for p in received)
        assert set(sent) <= set(uids)
    finally:
        server.stop()
        peer.stop()


def test_a_job_left_running_by_a_dead_server_is_resumed(
    tmp_path: Path, sqlite_url: str, workstation: dcmtk.Storescp
) -> None:
    port = free_port()  # nobody listens: the job cannot finish before the kill
    server = _server(tmp_path, sqlite_url, f"WS1=127.0.0.1:{port}").start()
    study = make_uid("route", "resume")
    sent = _store(server, tmp_path, study, 2, "ROUTE-5")
    until("a job exists", lambda: _jobs(server, study))
    server.kill9()
    index = Index(sqlite_url)
    try:
        with index.engine.begin() as connection:  # as the dead server left it: mid-send
            connection.execute(route_job.update().values(state="running"))
    finally:
        index.dispose()
    workstation.stop()
    workstation.port = port
    workstation.start()
    try:
        server.start()
        job = until("the resumed job is done",
                     lambda: [j for j in _jobs(server, study) if j["state"] == "done"])[0]
        assert job["sent"] == 2
        assert _received(workstation) == sorted(sent)
    finally:
        server.stop()


def test_jobs_can_be_retried_by_hand(
    tmp_path: Path, sqlite_url: str, workstation: dcmtk.Storescp
) -> None:
    server = _server(tmp_path, sqlite_url, workstation.peer).start()
    try:
        study = make_uid("route", "retry")
        _store(server, tmp_path, study, 1, "ROUTE-6")
        job = until("done", lambda: [j for j in _jobs(server, study) if j["state"] == "done"])
        retried = httpx.post(f"{server.base_url}/api/jobs/{job[0]['id']}/retry")
        assert retried.status_code == 200 and retried.json()["state"] == "pending"
        until("done again", lambda: [
            j for j in _jobs(server, study) if j["state"] == "done" and j["attempts"] == 2])
        audit = httpx.get(f"{server.base_url}/api/audit", params={"study": study}).json()
        sends = [e for e in audit if e["action"] == "route" and e["outcome"] == "sent"]
        assert len(sends) == 2  # sent again, as asked
        assert any(e["outcome"] == "retry requested" for e in audit)
        assert httpx.post(f"{server.base_url}/api/jobs/999999/retry").status_code == 404
    finally:
        server.stop()
