from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storage.blobs import BlobNotFound, FileStore


def test_put_is_content_addressed_and_streams_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = b"DICM" * 100_000

    committed = store.commit(store.staging.stage_stream(data[i : i + 4096]
                                                 for i in range(0, len(data), 4096)))
    committed.wait_durable()
    blob = committed.info

    assert committed.created
    assert blob.key == blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert b"".join(store.read_chunks(blob.key, chunk_size=1000)) == data
    path = next((tmp_path / "objects").glob("*/*"))
    assert path.name == blob.key and path.parent.name == blob.key[:2]
    assert list(store.staging.staged()) == []


def test_same_content_twice_is_one_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = store.commit(store.staging.stage_bytes(b"abc"))
    second = store.commit(store.staging.stage_bytes(b"abc"))

    assert (first.created, second.created) == (True, False)
    assert first.info == second.info
    assert list(store.keys()) == [first.info.key]
    assert list(store.staging.staged()) == []


def test_a_failing_stream_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    def chunks() -> object:
        yield b"partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.staging.stage_stream(chunks())  # type: ignore[arg-type]
    assert list(store.staging.staged()) == []
    assert list(store.keys()) == []


def test_stage_file_moves_only_from_its_own_tmp(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    inside = store.staging.temp_path()
    inside.write_bytes(b"move me")

    copied = store.staging.stage_file(outside, move=True)
    moved = store.staging.stage_file(inside, move=True)
    store.commit(copied)
    store.commit(moved)

    assert outside.read_bytes() == b"keep me"
    assert not inside.exists()
    assert len(list(store.keys())) == 2


def test_delete_stat_and_unknown_keys(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    blob = store.commit(store.staging.stage_bytes(b"xyz")).info

    assert store.stat(blob.key) == blob
    store.delete(blob.key)
    store.delete(blob.key)  # idempotent
    with pytest.raises(BlobNotFound):
        store.open(blob.key)
    with pytest.raises(BlobNotFound):
        store.open("../../etc/passwd")  # keys are hashes, never paths


def test_sweep_removes_partial_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.staging.temp_path().write_bytes(b"half")
    store.staging.temp_path().write_bytes(b"written")

    assert store.staging.sweep() == 2
    assert list(store.staging.staged()) == []


def test_a_blob_left_half_written_under_its_name_is_replaced(tmp_path: Path) -> None:
    """A blob reaches its name before it is synced, so a crash can leave a name holding less
    than its content; the next put of that content must not trust it."""
    store = FileStore(tmp_path)
    data = b"DICM" * 1000
    key = hashlib.sha256(data).hexdigest()
    torn = tmp_path / "objects" / key[:2] / key
    torn.write_bytes(data[:100])

    placed = store.commit(store.staging.stage_bytes(data))

    assert placed.info.key == key
    assert not placed.created  # a row may name it already: never deleted as "new"
    assert torn.read_bytes() == data
    assert list(store.staging.staged()) == []


def test_concurrent_puts_share_file_system_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from storage import blobs

    calls: list[int] = []
    first = threading.Event()
    release = threading.Event()

    def slow_syncfs(fd: int) -> int:
        calls.append(fd)
        first.set()
        release.wait(10)
        return 0

    monkeypatch.setattr(blobs, "_SYNCFS", slow_syncfs)
    store = FileStore(tmp_path)
    leader = store.place(store.staging.stage_bytes(b"first"))
    assert first.wait(10)
    others = [store.place(store.staging.stage_bytes(b"other %d" % i)) for i in range(8)]
    release.set()
    for placed in [leader, *others]:
        placed.wait_durable()
    assert len(calls) == 2  # the leader's, then one started after the eight were placed


def test_a_failed_sync_is_raised_to_every_put_it_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctypes
    import errno

    from storage import blobs

    def failing_syncfs(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(blobs, "_SYNCFS", failing_syncfs)
    store = FileStore(tmp_path)
    placed = store.place(store.staging.stage_bytes(b"lost?"))
    with pytest.raises(OSError, match="syncfs"):
        placed.wait_durable()


def test_start_writeback_hands_written_pages_to_the_kernel(tmp_path: Path) -> None:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux: it returns at once and leaves the
    file as it was; a range past the end is no error either (the sync after it reports)."""
    import os
    import sys

    from storage import sync

    if sys.platform.startswith("linux"):
        assert sync._SYNC_FILE_RANGE is not None
    path = tmp_path / "large"
    data = os.urandom(600_000)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        sync.start_writeback(handle.fileno(), 0, 300_000)
        sync.start_writeback(handle.fileno(), 300_000, 1_000_000)
    assert path.read_bytes() == data
