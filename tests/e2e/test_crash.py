"""Durability: kill -9 in the middle of an ingest loses no instance that got 0x0000, and
SIGTERM finishes in-flight stores and exits 0 leaving no partial file."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.attributes import Level
from tests.factories.corpus import generate
from tests.factories.datasets import ct_instance, to_part10_bytes
from tests.support import dcmtk
from tests.support.files import comparable, sop_instance_uid
from tests.support.server import PacsServer, wait_gone


@pytest.fixture(scope="module")
def five_hundred(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("crash-corpus")
    generate(str(root), patients=2, studies=1, series=5, instances=50, seed=31, quiet=True)
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == 500
    return files


def _start_storescu(server: PacsServer, files: list[Path], workdir: Path) -> subprocess.Popen[str]:
    config = dcmtk.storescu_config(files, workdir / "crash.cfg")
    return subprocess.Popen(
        [dcmtk.tool("storescu"), "-v", "-aec", "PACS", "-xf", str(config), "Default",
         "127.0.0.1", str(server.dimse_port), *map(str, files)],
        env=dcmtk.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_instances(server: PacsServer, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.services() as services, services.index.unit_of_work() as repo:
            count = repo.counts()[Level.IMAGE]
        if count >= at_least:
            return count
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} instances after {timeout} s")


def _acknowledged(output: str, files: list[Path]) -> list[Path]:
    """The files whose C-STORE got Success: storescu sends in order, one at a time."""
    return files[: output.count("Received Store Response (Success)")]


def test_kill_9_mid_ingest_loses_no_acknowledged_instance(
    server: PacsServer, five_hundred: list[Path], tmp_path: Path
) -> None:
    sender = _start_storescu(server, five_hundred, tmp_path)
    _wait_for_instances(server, 150)
    workers = server.children()
    server.kill9()
    assert wait_gone(workers) == [], "DIMSE workers outlived their killed parent"
    output, _ = sender.communicate(timeout=120)
    acknowledged = _acknowledged(output, five_hundred)
    assert 150 <= len(acknowledged) < 500

    server.start()  # same data dir and database
    with server.services() as services:
        for path in acknowledged:
            with services.index.unit_of_work() as repo:
                stored = repo.find_instance(sop_instance_uid(path))
            assert stored is not None, f"{path.name} was acknowledged but is not indexed"
            with services.blobs.open(stored.blob_key) as handle:
                assert comparable(handle.read()) == comparable(path.read_bytes())
    server.stop()

    # a blob renamed into place just before the kill (an orphan) was swept at the restart
    check = server.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "consistent" in check.stdout


def test_a_restart_sweeps_orphan_blobs_and_keeps_indexed_ones(
    server: PacsServer, tmp_path: Path
) -> None:
    """What kill -9 between a blob's rename into place and its index commit leaves: a file
    in objects/ under its content hash that no row names. The next start removes it, so
    ``pacs check`` is consistent without ``--repair``; every indexed blob stays."""
    stored = dcmtk.store_datasets(server.dimse_port, [
        ct_instance(PatientID="ORPHAN-1", InstanceNumber=n) for n in (1, 2)
    ], workdir=tmp_path)
    server.stop()
    orphan = to_part10_bytes(ct_instance(PatientID="ORPHAN-2"))
    key = hashlib.sha256(orphan).hexdigest()
    orphan_path = server.data_dir / "objects" / key[:2] / key
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan)
    before = server.cli("check")
    assert before.returncode != 0 and key in before.stdout, before.stdout

    server.start()
    server.stop()

    assert not orphan_path.exists()
    check = server.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "consistent" in check.stdout
    with server.services() as services:
        for path in stored:
            with services.index.unit_of_work() as repo:
                row = repo.find_instance(sop_instance_uid(path))
            assert row is not None
            with services.blobs.open(row.blob_key) as handle:
                assert comparable(handle.read()) == comparable(path.read_bytes())


def test_sigterm_finishes_in_flight_stores_and_exits_0(
    server: PacsServer, five_hundred: list[Path], tmp_path: Path
) -> None:
    sender = _start_storescu(server, five_hundred, tmp_path)
    _wait_for_instances(server, 100)
    workers = server.children()

    code = server.stop(signal.SIGTERM)
    output, _ = sender.communicate(timeout=120)

    assert code == 0
    assert wait_gone(workers) == []
    acknowledged = _acknowledged(output, five_hundred)
    with server.services() as services:
        assert list(services.blobs.staging.staged()) == []
        report = services.consistency.check()
        assert report.consistent, report
        assert report.instances >= len(acknowledged)
        for path in acknowledged:
            with services.index.unit_of_work() as repo:
                assert repo.find_instance(sop_instance_uid(path)) is not None


def test_sigterm_to_the_whole_process_group_stops_every_process(
    tmp_path: Path, sqlite_url: str, five_hundred: list[Path]
) -> None:
    """A service manager signals the main process and its DIMSE workers together."""
    running = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                         extra_args=["--dimse-processes", "3"]).start()
    sender = _start_storescu(running, five_hundred, tmp_path)
    _wait_for_instances(running, 50)
    workers = running.children()
    assert len(workers) >= 2

    code = running.stop_group(signal.SIGTERM)
    sender.communicate(timeout=120)

    assert code == 0
    assert wait_gone(workers) == []
    with running.services() as services:
        assert services.consistency.check().consistent
        assert list(services.blobs.staging.staged()) == []


@pytest.fixture
def sqlite_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    running = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url).start()
    try:
        yield running
    finally:
        running.stop()


def test_a_restart_removes_the_row_of_an_unacknowledged_store_whose_file_was_lost(
    sqlite_server: PacsServer, tmp_path: Path
) -> None:
    """SQLite beside the blobs: a store answers once one sync after its index commit made
    both durable; a crash inside that sync can leave the row on disk and not the file (the
    store was never acknowledged). The next start removes such a row among the newest, so
    ``pacs check`` is consistent, and the peer's retry stores the instance again. (On
    PostgreSQL a blob is durable before its row: nothing to remove.)"""
    server = sqlite_server
    datasets = [ct_instance(PatientID="LOST-1", InstanceNumber=n) for n in (1, 2, 3)]
    stored = dcmtk.store_datasets(server.dimse_port, datasets, workdir=tmp_path / "first")
    workers = server.children()
    server.kill9()  # the crash
    assert wait_gone(workers) == []
    with server.services() as services, services.index.unit_of_work() as repo:
        lost = repo.find_instance(sop_instance_uid(stored[2]))
    assert lost is not None
    lost_path = server.data_dir / "objects" / lost.blob_key[:2] / lost.blob_key
    lost_path.write_bytes(b"")  # what delayed allocation leaves of a file never synced
    before = server.cli("check")
    assert before.returncode != 0, before.stdout

    server.start()
    server.stop()

    check = server.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    with server.services() as services, services.index.unit_of_work() as repo:
        assert repo.find_instance(lost.sop_instance_uid) is None
        assert all(repo.find_instance(sop_instance_uid(p)) is not None for p in stored[:2])
    assert "did not survive a crash" in server.log()

    server.start()  # the modality sends it again
    dcmtk.store_datasets(server.dimse_port, [datasets[2]], workdir=tmp_path / "again")
    with server.services() as services, services.index.unit_of_work() as repo:
        again = repo.find_instance(lost.sop_instance_uid)
    assert again is not None
    with server.services() as services, services.blobs.open(again.blob_key) as handle:
        assert comparable(handle.read()) == comparable(stored[2].read_bytes())


def test_a_clean_restart_removes_no_row_even_if_its_file_is_gone(
    server: PacsServer, tmp_path: Path
) -> None:
    """Rows are removed only after a crash, and only the crashed run's newest: a file missing
    after a clean stop (a volume not mounted, a restored index) is for ``pacs check`` to
    report, not for the server to act on."""
    stored = dcmtk.store_datasets(server.dimse_port, [ct_instance(PatientID="KEEP-ROW")],
                                  workdir=tmp_path)
    server.stop()
    with server.services() as services, services.index.unit_of_work() as repo:
        row = repo.find_instance(sop_instance_uid(stored[0]))
    assert row is not None
    (server.data_dir / "objects" / row.blob_key[:2] / row.blob_key).unlink()

    server.start()
    server.stop()

    with server.services() as services, services.index.unit_of_work() as repo:
        assert repo.find_instance(row.sop_instance_uid) is not None
    check = server.cli("check")
    assert check.returncode != 0 and "missing file" in check.stdout, check.stdout
