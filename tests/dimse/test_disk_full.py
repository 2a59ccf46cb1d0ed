"""A full data disk answers 0xA700 (out of resources) and corrupts nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from storage.attributes import Level
from tests.factories import datasets as f
from tests.support.server import PacsServer


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (needs root, as in CI; skipped elsewhere)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _server(small_disk: Path, sqlite_url: str, reserve_mb: int) -> PacsServer:
    server = PacsServer(
        data_dir=small_disk / "data", database_url=sqlite_url,
        extra_args=["--dimse-processes", "1"],
    )
    server.start_env = {"PACS_MIN_FREE_SPACE_MB": str(reserve_mb)}
    return server.start()


def _fill(assoc: Any, tmp_path: Path, count: int, **attributes: Any) -> tuple[list[int], str]:
    """Store CT instances until one is refused: (every status, the refusal's Error Comment)."""
    statuses: list[int] = []
    for number in range(1, count):
        ds = f.ct_instance(InstanceNumber=number, **attributes)
        answer = assoc.send_c_store(f.write_part10(ds, tmp_path / "one.dcm"))
        statuses.append(int(answer.Status))
        if statuses[-1] != 0x0000:
            return statuses, str(answer.get("ErrorComment", ""))
    return statuses, ""


def test_store_is_refused_with_a700_below_the_reserve(
    small_disk: Path, tmp_path: Path, sqlite_url: str
) -> None:
    server = _server(small_disk, sqlite_url, reserve_mb=1)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="FILLER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        statuses, comment = _fill(assoc, tmp_path, 400, PatientID="FULL-1", Rows=128,
                                  Columns=128)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assert server.stop() == 0

    assert statuses[-1] == 0xA700, statuses[-5:]
    assert "storage full" in comment
    stored = statuses.count(0x0000)
    assert stored > 10
    with server.services() as services:
        with services.index.unit_of_work() as repo:
            assert repo.counts()[Level.IMAGE] == stored
        report = services.consistency.check()
        assert report.consistent and report.blobs == stored
        assert list(services.blobs.staging.staged()) == []


@pytest.mark.fast_transport("a write error while receiving aborts the association")
def test_a_write_error_while_receiving_answers_a700_and_keeps_the_association(
    small_disk: Path, tmp_path: Path, sqlite_url: str
) -> None:
    """No reserve: the disk fills while a data set is being received (ENOSPC inside
    pynetdicom's receive). The store answers 0xA700 naming the problem, the partial file is
    removed, and once there is room again the same association stores the next instance."""
    server = _server(small_disk, sqlite_url, reserve_mb=0)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="FILLER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        # 0.5 MB each, on 3 MB
        statuses, comment = _fill(assoc, tmp_path, 40, PatientID="FULL-2", Rows=512,
                                  Columns=512)
        assert assoc.is_established
        partial = [p for p in (small_disk / "data" / "tmp").rglob("*")
                   if p.is_file() and p.stat().st_size]  # (in each process's folder)
        subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
        ds = f.ct_instance(PatientID="FULL-2", InstanceNumber=99, Rows=512, Columns=512)
        after = int(assoc.send_c_store(f.write_part10(ds, tmp_path / "one.dcm")).Status)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assert server.stop() == 0

    assert statuses[-1] == 0xA700, statuses[-5:]
    assert comment == "no space left on device while receiving the data set"
    assert partial == []
    assert after == 0x0000
    stored = statuses.count(0x0000) + 1
    assert stored > 2
    with server.services() as services:
        with services.index.unit_of_work() as repo:
            assert repo.counts()[Level.IMAGE] == stored
        report = services.consistency.check()
        assert report.consistent and report.blobs == stored
