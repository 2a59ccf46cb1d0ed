"""The index's SQLite writer queue: writers wait on a lock that wakes them, not on SQLite's
sleeping busy handler."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from sqlalchemy import text

from storage.index import Index


def test_a_sqlite_writer_waits_for_the_writer_lock_of_another_process(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    index.upgrade()
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
    index.dispose()


def test_writers_of_one_index_take_turns(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.db'}")
    index.upgrade()
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
    index.dispose()
