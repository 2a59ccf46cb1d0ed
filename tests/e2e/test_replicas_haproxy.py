"""Two replicas on one PostgreSQL and one blob store (moto's S3, or a shared folder) behind
HAProxy (TCP for DIMSE, HTTP for DICOMweb), on loopback: stores through the balancer reach
both, what one stored or corrected is read through the other, each study is routed once, and
kill -9 of one replica mid-ingest loses nothing acknowledged while the other goes on."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.factories.corpus import generate
from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.support import dcmtk, haproxy
from tests.support.files import comparable, sop_instance_uid
from tests.support.moto import moto_s3
from tests.support.server import PacsServer, wait_gone
from tests.support.wait import until

pytestmark = pytest.mark.skipif(not haproxy.available(),
                                reason="haproxy is not installed (make haproxy)")


@dataclass
class Cluster:
    replicas: list[PacsServer]
    balancer: haproxy.Haproxy
    workstation: dcmtk.Storescp


@pytest.fixture(params=["s3", "shared-folder"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """Two replicas on one PostgreSQL database and one blob store: a bucket of moto's S3
    server (each replica with a data folder of its own, for staging only), or one data folder
    shared by both (a file store on a shared volume)."""
    stack = ExitStack()
    blob_store = None
    if request.param == "s3":
        moto = stack.enter_context(moto_s3(tmp_path / "moto"))
        for name, value in moto.env().items():
            monkeypatch.setenv(name, value)  # for the replicas and the tests' own look
        blob_store = f"s3://{moto.bucket()}/archive/"
    workstation = dcmtk.Storescp(tmp_path / "ws", ae_title="WS1").start()
    replicas = [PacsServer(
        data_dir=tmp_path / (f"{name}-data" if blob_store else "shared-data"),
        database_url=postgres_url, blob_store=blob_store,
        extra_args=["--peer", workstation.peer, "--route", "*=WS1", "--stable-seconds", "0.5"],
        start_env={"PACS_NODE_ID": name, "PACS_ROUTE_LEASE_SECONDS": "2",
                   "PACS_ROUTE_RETRY_SECONDS": "0.3"},
        log_name=f"{name}-serve.log",
    ) for name in ("node-a", "node-b")]
    balancer = haproxy.Haproxy(tmp_path / "lb", replicas)
    try:
        for replica in replicas:
            replica.start()
        balancer.start()
        yield Cluster(replicas, balancer, workstation)
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()
        workstation.stop()
        stack.close()


def _send_study(port: int, workdir: Path, study: str, patient: str, count: int) -> list[Path]:
    folder = workdir / f"sent-{study[-8:]}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_part10(ct_instance(PatientID=patient, PatientName="Lb^Patient",
                                      StudyInstanceUID=study, InstanceNumber=n),
                          folder / f"{n}.dcm") for n in range(1, count + 1)]
    result = dcmtk.storescu(port, files, workdir=workdir)
    assert dcmtk.successes(result) == count, dcmtk.status_lines(result)
    return files


def test_stores_through_the_balancer_reach_both_and_either_serves_everything(
    cluster: Cluster, tmp_path: Path
) -> None:
    first, second = cluster.replicas
    lb = cluster.balancer
    studies = {make_uid("lb", n): f"LB-{n}" for n in range(4)}
    sent = {study: _send_study(lb.dimse_port, tmp_path, study, patient, 3)
            for study, patient in studies.items()}
    assert all(count >= 1 for count in lb.sessions("dimse").values()), lb.sessions("dimse")

    # C-FIND to one replica, QIDO-RS through the balancer and to the other
    _, found = dcmtk.findscu(first.dimse_port, ["QueryRetrieveLevel=STUDY", "PatientID=LB-*",
                                                "StudyInstanceUID"], workdir=tmp_path)
    assert {str(ds.StudyInstanceUID) for ds in found} == set(studies)
    for base in (lb.base_url, second.base_url):
        client = DICOMwebClient(f"{base}/dicom-web")
        assert {r["0020000D"]["Value"][0] for r in client.search_for_studies(
            search_filters={"PatientID": "LB-*"})} == set(studies)
    # WADO-RS of every study through the balancer (requests spread over both): byte-identical
    client = DICOMwebClient(f"{lb.base_url}/dicom-web")
    for study, files in sent.items():
        got = {str(ds.SOPInstanceUID): ds for ds in client.retrieve_study(study)}
        for path in files:
            original = pydicom.dcmread(path)
            assert got[str(original.SOPInstanceUID)].PixelData == original.PixelData
    assert all(count >= 1 for count in lb.sessions("dicomweb").values())

    # a correction on one replica is what the other answers, metadata included
    study = next(iter(studies))
    corrected = httpx.patch(f"{first.base_url}/api/studies/{study}",
                            json={"PatientName": "Corrected^Name"}, timeout=60)
    assert corrected.status_code == 200, corrected.text
    other = DICOMwebClient(f"{second.base_url}/dicom-web")
    match = other.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert match, corrected.json().get("findings")  # still archived (visible) after the correction
    assert match[0]["00100010"]["Value"][0]["Alphabetic"] == "Corrected^Name"
    metadata = other.retrieve_study_metadata(study)
    assert {m["00100010"]["Value"][0]["Alphabetic"] for m in metadata} == {"Corrected^Name"}

    # each study routed once, though both replicas run routing jobs
    every_sop = {sop_instance_uid(p) for files in sent.values() for p in files}
    received = until("every study routed", lambda: (
        (got := Counter(sop_instance_uid(p) for p in cluster.workstation.files()))
        and set(got) == every_sop and got), timeout=120)
    assert set(received.values()) == {1}, received


def test_kill_9_of_a_replica_mid_ingest_loses_nothing_and_the_other_goes_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    lb = cluster.balancer
    root = tmp_path / "corpus"
    generate(str(root), patients=1, studies=1, series=2, instances=150, seed=44, quiet=True)
    files = sorted(root.rglob("*.dcm"))
    config = dcmtk.storescu_config(files, tmp_path / "kill.cfg")
    sender = subprocess.Popen(
        [dcmtk.tool("storescu"), "-v", "-aec", "PACS", "-xf", str(config), "Default",
         "127.0.0.1", str(lb.dimse_port), *map(str, files)],
        env=dcmtk.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    serving = until("one replica serves the association", lambda: [
        n for n, row in enumerate(lb.stats()) if row["pxname"] == "dimse"
        and row["svname"].startswith("pacs") and int(row["scur"] or 0) > 0])
    victim = cluster.replicas[int(lb.stats()[serving[0]]["svname"][len("pacs"):])]
    survivor = next(r for r in cluster.replicas if r is not victim)
    until("some stores acknowledged", lambda: _indexed(survivor) >= 50)
    workers = victim.children()
    victim.kill9()
    assert wait_gone(workers) == []
    output, _ = sender.communicate(timeout=120)
    acknowledged = files[: output.count("Received Store Response (Success)")]
    assert 50 <= len(acknowledged) < len(files)

    # the balancer takes the dead replica out; the rest go to the survivor
    until("the balancer sees one replica", lambda: lb.servers_up("dimse") == 1)
    rest = files[len(acknowledged):]
    result = dcmtk.storescu(lb.dimse_port, rest, workdir=tmp_path)
    assert dcmtk.successes(result) == len(rest), dcmtk.status_lines(result)
    with survivor.services() as services:
        for path in files:
            with services.index.unit_of_work() as repo:
                stored = repo.find_instance(sop_instance_uid(path))
            assert stored is not None, f"{path.name} is not indexed"
            with services.blobs.open(stored.blob_key) as handle:
                assert comparable(handle.read()) == comparable(path.read_bytes())


def _indexed(server: PacsServer) -> int:
    from storage.attributes import Level

    with server.services() as services, services.index.unit_of_work() as repo:
        return int(repo.counts()[Level.IMAGE])
