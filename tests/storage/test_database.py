"""The index's SQLite writer queue: writers wait on a lock that wakes them, not on SQLite's
sleeping busy handler."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.index import Index, database


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """An upgraded SQLite index at ``tmp_path / "index.db"``, disposed afterwards."""
    built = Index(f"sqlite:///{tmp_path / 'index.db'}")
    built.upgrade()
    yield built
    built.dispose()


def test_a_sqlite_writer_waits_for_the_writer_lock_of_another_process(
    tmp_path: Path, index: Index
) -> None:
    lock_file = tmp_path / "index.db-writer"
    # another open file description: flock conflicts as it would with another process
    held = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    committed = threading.Event()

    def write() -> None:
        with index.unit_of_work(write=True) as repo:
            repo.connection.execute(text("CREATE TABLE probe (x INTEGER)"))
        committed.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert not committed.wait(0.5)  # queued behind the holder, not inside SQLite
        with index.unit_of_work() as repo:  # readers never queue
            assert repo.connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
    writer.join(10)
    assert committed.is_set()
    with index.unit_of_work() as repo:
        assert repo.connection.execute(text("SELECT count(*) FROM probe")).scalar() == 0


def test_writers_of_one_index_take_turns(index: Index) -> None:
    with index.unit_of_work(write=True) as repo:
        repo.connection.execute(text("CREATE TABLE counter (n INTEGER)"))
        repo.connection.execute(text("INSERT INTO counter VALUES (0)"))

    def bump() -> None:
        for _ in range(50):
            with index.unit_of_work(write=True) as repo:
                n = repo.connection.execute(text("SELECT n FROM counter")).scalar_one()
                repo.connection.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with index.unit_of_work() as repo:
        assert repo.connection.execute(text("SELECT n FROM counter")).scalar() == 200


def test_a_sqlite_commit_is_synced_after_the_writer_lock_is_released(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """synchronous=FULL's guarantee (the log fsynced before the write returns), without the
    fsync inside the writer lock: SQLite runs at NORMAL and the index syncs the log itself."""
    lock_file = tmp_path / "index.db-writer"
    seen: list[tuple[Path, bool, int]] = []
    real = database._fdatasync

    def observed(path: Path) -> OSError | None:
        probe = os.open(lock_file, os.O_RDWR)
        try:  # the writer lock is free while the log is synced
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probe, fcntl.LOCK_UN)
            free = True
        except BlockingIOError:
            free = False
        finally:
            os.close(probe)
        with sqlite3.connect(tmp_path / "index.db") as other:  # the row is committed already
            rows = other.execute("SELECT count(*) FROM probe").fetchone()[0]
        seen.append((path, free, rows))
        return real(path)

    monkeypatch.setattr(database, "_fdatasync", observed)
    with index.unit_of_work(write=True) as repo:
        repo.connection.execute(text("CREATE TABLE probe (x INTEGER)"))
    seen.clear()
    with index.unit_of_work(write=True) as repo:
        repo.connection.execute(text("INSERT INTO probe VALUES (1)"))
        assert repo.connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    assert seen == [(tmp_path / "index.db-wal", True, 1)]
    with index.unit_of_work() as repo:  # a read syncs nothing
        repo.connection.execute(text("SELECT count(*) FROM probe"))
    assert len(seen) == 1


def test_concurrent_commits_share_a_log_sync(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    with index.unit_of_work(write=True) as repo:
        repo.connection.execute(text("CREATE TABLE probe (x INTEGER)"))
    syncs: list[Path] = []
    first_started = threading.Event()
    release = threading.Event()

    def slow(path: Path) -> OSError | None:
        syncs.append(path)
        first_started.set()
        release.wait(10)  # every other writer commits while this one runs
        return None

    monkeypatch.setattr(database, "_fdatasync", slow)

    def write(value: int) -> None:
        with index.unit_of_work(write=True) as repo:
            repo.connection.execute(text("INSERT INTO probe VALUES (:x)"), {"x": value})

    leader = threading.Thread(target=write, args=(0,))
    leader.start()
    assert first_started.wait(10)
    others = [threading.Thread(target=write, args=(i,)) for i in range(1, 7)]
    for thread in others:
        thread.start()
    # the six commit (the writer lock is free) and queue for the next sync
    for _ in range(200):
        with index.unit_of_work() as repo:
            if repo.connection.execute(text("SELECT count(*) FROM probe")).scalar() == 7:
                break
        threading.Event().wait(0.05)
    release.set()
    for thread in [leader, *others]:
        thread.join(10)
    assert len(syncs) == 2  # the leader's, then one for the six that committed during it


def test_a_failed_log_sync_is_reported_and_the_blob_of_a_committed_row_kept(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pacs.services.errors import OutOfResources
    from pacs.services.ingest import Incoming, IngestService, Origin
    from storage.blobs import FileStore
    from tests.factories.datasets import ct_instance, to_part10_bytes

    blobs = FileStore(tmp_path / "data")
    ingest = IngestService(blobs=blobs, index=index)
    monkeypatch.setattr(database, "_fdatasync", lambda path: OSError(5, "Input/output error"))

    # the peer reads a fixed phrase; the cause (a path, errno) is in the log only
    with pytest.raises(OutOfResources, match="^the index could not be made durable$"):
        ingest.store(Incoming.data(to_part10_bytes(ct_instance())), Origin("import"))
    assert "fsync of the write-ahead log failed" in caplog.text

    with index.unit_of_work() as repo:  # committed (though not confirmed on disk) ...
        keys = [row[0] for row in repo.connection.execute(text("SELECT blob_key FROM instance"))]
    assert len(keys) == 1
    assert blobs.exists(keys[0])  # ... so its file stays
