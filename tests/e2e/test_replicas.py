"""Several ``pacs serve`` on one PostgreSQL and one store: the schema upgraded once, routing
jobs and studies' stability checks claimed by one server each under a lease, a dead server's
job or check finished by another, a second server on one SQLite index refused."""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from storage.index import Index
from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.support import dcmtk
from tests.support.server import PacsServer, wait_gone
from tests.support.wait import until

LEASE_S = "2"


def _jobs(server: PacsServer, study: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/jobs", params={"study": study}, timeout=30)
    assert answer.status_code == 200
    jobs: list[dict[str, Any]] = answer.json()
    return jobs


def _store(server: PacsServer, workdir: Path, study: str, count: int) -> list[str]:
    folder = workdir / f"sent-{study[-8:]}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_part10(ct_instance(PatientID="REPLICA", StudyInstanceUID=study,
                                      InstanceNumber=n), folder / f"{n}.dcm")
             for n in range(1, count + 1)]
    result = dcmtk.storescu(server.dimse_port, files, workdir=workdir)
    assert dcmtk.successes(result) == count, dcmtk.status_lines(result)
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _received(peer: dcmtk.Storescp) -> Counter[str]:
    return Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                   for p in peer.files())


def _replica(tmp_path: Path, name: str, url: str, peer: str, *,
             stable_seconds: str = "0.5") -> PacsServer:
    return PacsServer(
        data_dir=tmp_path / "shared-data", database_url=url,
        extra_args=["--peer", peer, "--route", f"*={peer.split('=')[0]}",
                    "--stable-seconds", stable_seconds],
        start_env={"PACS_ROUTE_RETRY_SECONDS": "0.3", "PACS_ROUTE_LEASE_SECONDS": LEASE_S,
                   "PACS_STUDY_LEASE_SECONDS": LEASE_S, "PACS_NODE_ID": name},
        log_name=f"{name}-serve.log",
    )


def _slow_to_check(study: str, series: int, folder: Path) -> list[Path]:
    """A study of ``series`` series whose stability pixel check takes about a second per
    series: each first instance is a 2048 x 2048 JPEG 2000 frame (one codestream, encoded
    once; the copies differ in their UIDs only, so each is a file of its own)."""
    first = ct_instance(PatientID="REPLICA", StudyInstanceUID=study, Rows=2048, Columns=2048)
    first.compress(JPEG2000Lossless)
    files = []
    for n in range(1, series + 1):
        ds = copy.deepcopy(first)
        ds.SeriesNumber = n
        ds.SeriesInstanceUID = make_uid("replica", study, "series", n)
        ds.SOPInstanceUID = make_uid("replica", study, "sop", n)
        files.append(write_part10(ds, folder / f"{n}.dcm"))
    return files


@pytest.fixture
def slow_workstation(tmp_path: Path) -> Iterator[dcmtk.Storescp]:
    peer = dcmtk.Storescp(tmp_path / "ws", ae_title="WS1", sleep_during=2).start()
    try:
        yield peer
    finally:
        peer.stop()


def test_concurrent_schema_upgrades_wait_for_each_other(postgres_url: str) -> None:
    upgrades = [subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "db", "upgrade", "--database-url", postgres_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) for _ in range(3)]
    outputs = [process.communicate(timeout=300)[0] for process in upgrades]
    assert [process.returncode for process in upgrades] == [0, 0, 0], outputs


def test_a_dead_servers_routing_job_is_finished_by_another_and_each_study_routed_once(
    tmp_path: Path, postgres_url: str, slow_workstation: dcmtk.Storescp
) -> None:
    first = _replica(tmp_path, "node-a", postgres_url, slow_workstation.peer).start()
    second = _replica(tmp_path, "node-b", postgres_url, slow_workstation.peer)
    try:
        study = make_uid("replica", "killed")
        # 16 s to send (the workstation is slow): time for node-b to start while the job
        # runs, on a loaded machine too (a start has taken 11 s)
        sent = _store(first, tmp_path, study, 8)
        until("node-a runs the job", lambda: [
            j for j in _jobs(first, study) if j["state"] == "running"])
        second.start()  # its start leaves the running job alone: node-a's lease is live
        assert [j["state"] for j in _jobs(second, study)] == ["running"]
        workers = first.children()
        first.kill9()
        assert wait_gone(workers) == []

        job = until("node-b finished the job once node-a's lease ran out", lambda: [
            j for j in _jobs(second, study) if j["state"] == "done"], timeout=90)[0]
        assert job["attempts"] == 2 and job["sent"] == 8
        assert set(_received(slow_workstation)) == set(sent)

        # a study stored now is planned and sent once, though two servers could run it
        first.start()
        slow_workstation.clear()
        later = make_uid("replica", "once")
        more = _store(second, tmp_path, later, 2)
        until("the second study's job is done", lambda: [
            j for j in _jobs(first, later) if j["state"] == "done"], timeout=90)
        assert len(_jobs(first, later)) == 1
        assert _received(slow_workstation) == Counter(dict.fromkeys(more, 1))
    finally:
        first.stop()
        second.stop()


def test_a_dead_servers_stability_check_is_finished_by_another_and_done_once(
    tmp_path: Path, postgres_url: str, workstation: dcmtk.Storescp
) -> None:
    replicas = {name: _replica(tmp_path, name, postgres_url, workstation.peer,
                               stable_seconds="2") for name in ("node-a", "node-b")}
    index = Index(postgres_url)

    def lease(study: str) -> tuple[str | None, dt.datetime | None]:
        with index.unit_of_work() as repository:
            return repository.studies.study_lease(study)

    try:
        for replica in replicas.values():
            replica.start()
        study = make_uid("replica", "stability")
        files = _slow_to_check(study, 5, tmp_path / "slow")
        result = dcmtk.storescu(replicas["node-a"].dimse_port, files, workdir=tmp_path)
        assert dcmtk.successes(result) == len(files), dcmtk.status_lines(result)

        holder, first_expiry = until("a replica claims the study's check", lambda: (
            lease(study) if lease(study)[0] else None))
        assert first_expiry is not None
        until("its first lease ran out", lambda: dt.datetime.now(dt.UTC) > first_expiry)
        # five seconds of checking: the holder is still at it, its renewed lease not taken
        assert lease(study)[0] == holder
        other_name = "node-b" if holder == "node-a" else "node-a"
        other = replicas[other_name]
        assert _study(other, study)["stable"] is False
        workers = replicas[holder].children()
        replicas[holder].kill9()
        assert wait_gone(workers) == []

        until("the other replica settled the study once the lease ran out",
              lambda: _study(other, study)["stable"], timeout=120)
        stable = [e for e in _audit(other, study) if e["action"] == "stable"]
        assert [e["detail"]["node"] for e in stable] == [other_name]
        assert _study(other, study)["state"] == "archived"  # the pixel check passed
        assert len(_jobs(other, study)) == 1  # routed once
        assert lease(study) == (None, None)
        log = other.log_path.read_text() if other.log_path else ""
        assert f"stability check of {study} taken over from {holder}" in log
    finally:
        index.dispose()
        for replica in replicas.values():
            replica.stop()


def _study(server: PacsServer, study: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.base_url}/api/studies/{study}", timeout=30)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _audit(server: PacsServer, study: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/api/audit", params={"study": study}, timeout=30)
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()
    return events


def test_a_second_server_on_one_sqlite_index_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    first = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url).start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(tmp_path / "data"),
             "--database-url", sqlite_url, "--dimse-port", "0", "--http-port", "0"],
            capture_output=True, text=True, timeout=120,
        )
        assert second.returncode == 1
        assert "another pacs serve is running on this SQLite index" in second.stderr
        # and the first goes on serving
        assert httpx.get(f"{first.base_url}/health", timeout=10).status_code == 200
    finally:
        first.stop()
