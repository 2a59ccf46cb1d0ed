"""Staging folders per process: a sweep never removes what a live process is uploading, and
always removes what a dead one left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.staging import LOCK, Staging

_HOLDER = """
import sys
from pathlib import Path
from storage.staging import Staging
staging = Staging(Path(sys.argv[1]))
staged = staging.stage_bytes(b"in flight")
print(staged.path, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process staging under ``tmp_path/tmp``: (the process, its staged file)."""
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "tmp")], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])},
    )
    try:
        assert process.stdout is not None
        staged = Path(process.stdout.readline().strip())
        assert staged.is_file()
        yield process, staged
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def test_a_sweep_leaves_a_live_process_alone_and_clears_a_dead_one(
    tmp_path: Path, holder: tuple[subprocess.Popen[str], Path]
) -> None:
    process, staged = holder
    mine = Staging(tmp_path / "tmp")
    try:
        mine.stage_bytes(b"mine, left by a crash")

        assert mine.sweep() == 1  # its own
        assert staged.read_bytes() == b"in flight"  # the other's upload is under way
        assert staged in mine.staged()

        os.kill(process.pid, signal.SIGKILL)
        process.wait()

        assert mine.sweep() == 1
        assert not staged.parent.exists()
        assert mine.folder.is_dir() and mine.staged() == []
    finally:
        mine.close()
    assert not mine.folder.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_each_store_of_a_process_has_its_own_folder(tmp_path: Path) -> None:
    first, second = Staging(tmp_path / "tmp"), Staging(tmp_path / "tmp")
    try:
        assert first.folder != second.folder
        assert first.folder.name == f"{socket.gethostname()}-{os.getpid()}"
        staged = second.stage_bytes(b"second's")

        first.sweep()

        assert staged.path.is_file()  # the other store's folder is held: left alone
        assert (second.folder / LOCK).is_file()
    finally:
        second.close()
        first.close()


def test_a_dead_holder_of_the_same_name_leaves_nothing_behind(tmp_path: Path) -> None:
    """A restart with the same host name and PID (PID 1 in a container) claims the folder
    again, without what the dead run staged in it; files of the former single tmp/ folder go
    at the first sweep."""
    root = tmp_path / "tmp"
    left = root / f"{socket.gethostname()}-{os.getpid()}"
    left.mkdir(parents=True)
    (left / "upload.part").write_bytes(b"from the run before")
    (root / "old-layout.part").write_bytes(b"from an older version")

    staging = Staging(root)
    try:
        assert staging.folder == left
        assert staging.staged() == [root / "old-layout.part"]
        assert staging.sweep() == 1
        assert staging.staged() == []
    finally:
        staging.close()


def test_stage_file_moves_only_from_its_own_folder(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "tmp")
    other = Staging(tmp_path / "tmp")
    try:
        foreign = other.temp_path()
        foreign.write_bytes(b"another process's")
        own = staging.temp_path()
        own.write_bytes(b"received here")

        copied = staging.stage_file(foreign, move=True)
        moved = staging.stage_file(own, move=True)

        assert foreign.read_bytes() == b"another process's" and copied.path != foreign
        assert moved.path == own
    finally:
        staging.close()
        other.close()
