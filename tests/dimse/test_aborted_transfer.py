"""A sender that dies in the middle of a dataset leaves no partial file, and the server goes on."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from storage.attributes import Level
from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.server import PacsServer


def _wait(condition: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _sizes(folder: Path) -> list[int]:
    """Sizes of the files in ``folder`` and its folders (each process stages in one of its
    own); one removed while it is listed is skipped (the server removes partial files as the
    test looks)."""
    sizes = []
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                sizes.append(path.stat().st_size)
        except FileNotFoundError:
            continue
    return sizes


@pytest.mark.fast_transport(
    "an aborted C-STORE leaves its partial data set in the temporary folder till the next start")
def test_killed_sender_leaves_no_partial_file(sqlite_server: PacsServer, tmp_path: Path) -> None:
    big = f.write_part10(
        f.multiframe_instance(frames=300, Rows=512, Columns=512, PatientID="ABORT-1"),
        tmp_path / "big.dcm",
    )
    config = dcmtk.storescu_config([big], tmp_path / "big.cfg")
    partials = sqlite_server.data_dir / "tmp"
    sender = subprocess.Popen(
        [dcmtk.tool("storescu"), "-aec", "PACS", "-xf", str(config), "Default", "--max-pdu",
         "16384", "127.0.0.1", str(sqlite_server.dimse_port), str(big)],
        env=dcmtk.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait(lambda: any(size > 1_000_000 for size in _sizes(partials))), (
            "the transfer never started"
        )
    finally:
        sender.kill()
        sender.wait()

    # (empty files made ahead of time for the next receive may be there: not partial files)
    assert _wait(lambda: not any(_sizes(partials))), list(partials.rglob("*"))
    assert dcmtk.echoscu(sqlite_server.dimse_port).returncode == 0
    with sqlite_server.services() as services, services.index.unit_of_work() as repo:
        assert repo.counts()[Level.IMAGE] == 0
