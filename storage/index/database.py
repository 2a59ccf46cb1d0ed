"""Engine, SQLite pragmas, units of work, and schema upgrades.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and a write unit of work
starts with ``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing on
a read-to-write upgrade. LIKE is case-sensitive, as on PostgreSQL. PostgreSQL runs through
psycopg 3 at READ COMMITTED.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry

from storage.index.errors import IndexDataError, IndexNotDurable, IndexUnavailable
from storage.index.repository import Repository
from storage.sync import SharedSync

__all__ = ["Index", "IndexDataError", "IndexNotDurable", "IndexUnavailable"]

_WRITE = "pacs_write"
UNAVAILABLE, REFUSED, STALE_CONNECTION, POOL_TIMEOUT = (
    "unavailable", "refused", "stale_connection", "pool_timeout")
"""The kinds of database error :meth:`Index.watch_errors` tells."""
BUSY_TIMEOUT_MS = 60_000


class Index:
    """The index database. Thread-safe: one connection per unit of work, from a pool."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        pool_size: int = 8,
        file_system_sync: Callable[[Path], SharedSync | None] | None = None,
    ) -> None:
        """``file_system_sync(path)``: a shared sync of the file system ``path`` is on, if the
        caller has one (the blob store's, :meth:`storage.blobs.FileStore.sync_for`); a SQLite
        index there makes the commits that ask for it (``unit_of_work(files_too=True)``: a
        store's) durable with it, so that one flush covers the commit and the blobs written
        before it. Other commits keep the log's own fdatasync: a ``syncfs`` flushes whatever
        any process wrote on that file system, which an audit row should not wait for."""
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        options: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {
                "check_same_thread": False,
                "timeout": BUSY_TIMEOUT_MS / 1000,
            }
            options["pool_size"] = pool_size
            options["max_overflow"] = 64
        else:
            options["pool_size"] = pool_size
            options["max_overflow"] = 32
            options["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **options)
        self._writers: _WriterQueue | None = None
        self._on_error: Callable[[str], None] | None = None
        self._log_sync: SharedSync | None = None
        self._files_sync: SharedSync | None = None  # also the blobs' (one file system)
        if self.is_sqlite:
            on_file = bool(self.url.database) and self.url.database != ":memory:"
            if on_file and sqlite_synchronous == "FULL":
                # FULL's guarantee, with the log's fsync taken out of the writer lock
                log = Path(f"{self.url.database}-wal")
                self._log_sync = SharedSync(lambda: _fdatasync(log), name="index-log-sync")
                if file_system_sync is not None:
                    self._files_sync = file_system_sync(log)
                sqlite_synchronous = "NORMAL"
            _configure_sqlite(self.engine, sqlite_synchronous)
            if on_file:
                self._writers = _WriterQueue(Path(f"{self.url.database}-writer"))

    @contextmanager
    def unit_of_work(self, *, write: bool = False, files_too: bool = False
                     ) -> Iterator[Repository]:
        """One transaction: committed when the block ends, rolled back if it raises.
        ``files_too``: the sync that makes the commit durable is the file system's one
        (:attr:`commit_sync`) when there is one, which also makes the blobs placed before it
        durable."""
        try:
            with self.engine.connect() as connection, self._writer_turn(write):
                if write:
                    connection.execution_options(**{_WRITE: True})
                with connection.begin():
                    yield Repository(connection)
        except (OperationalError, InterfaceError) as exc:
            raise IndexUnavailable(str(exc.orig)) from exc
        except DBAPIError as exc:
            raise IndexDataError(str(exc.orig)) from exc
        except PoolTimeout as exc:
            if self._on_error is not None:
                self._on_error(POOL_TIMEOUT)
            raise IndexUnavailable("no database connection came free in the pool's time") from exc
        if write and self._log_sync is not None:
            self._sync_log(self._files_sync if files_too and self._files_sync else self._log_sync)

    def watch_errors(self, on_error: Callable[[str], None]) -> None:
        """Tell ``on_error(kind)`` of every database error, whoever catches it afterwards:
        :data:`UNAVAILABLE` (the database cannot be reached, dropped the connection or stayed
        locked), :data:`REFUSED` (it refused a statement: a constraint, a value),
        :data:`STALE_CONNECTION` (a pooled connection found dead by its pre-ping, replaced)
        and :data:`POOL_TIMEOUT` (no pooled connection came free). Called on the failing
        thread; it must not block."""
        self._on_error = on_error

        def handle_error(context: ExceptionContext) -> None:
            if context.is_pre_ping:
                kind = STALE_CONNECTION
            elif context.is_disconnect or isinstance(
                    context.sqlalchemy_exception, (OperationalError, InterfaceError)):
                kind = UNAVAILABLE
            else:
                kind = REFUSED
            on_error(kind)

        event.listen(self.engine, "handle_error", handle_error)

    @property
    def commit_sync(self) -> SharedSync | None:
        """The sync that makes a ``files_too`` write transaction durable after its commit
        (SQLite at FULL on a file), or None when the commit itself is durable (PostgreSQL) or
        never is."""
        return self._files_sync or self._log_sync

    def _sync_log(self, sync: SharedSync) -> None:
        """Durable commits on SQLite without holding the writer lock through an fsync.

        With ``synchronous=FULL`` SQLite fsyncs its write-ahead log inside every commit, while
        it holds the database's one writer lock, so concurrent writers queue behind each
        other's fsync. The index runs SQLite at ``synchronous=NORMAL`` instead (a commit writes
        the log without fsync; checkpoints still fsync before the log is reused, and a log cut
        short by a power loss is recovered to its last whole transaction) and syncs the log
        after the commit, once the lock is released: when this returns, the log up to and
        including that commit is on disk, which is FULL's guarantee. Concurrent commits share
        one fsync when it started after theirs."""
        try:
            sync.wait()
        except OSError as error:
            raise IndexNotDurable(f"fsync of the write-ahead log failed: {error}") from error

    @contextmanager
    def _writer_turn(self, write: bool) -> Iterator[None]:
        if not write or self._writers is None:
            yield
            return
        with self._writers:
            yield

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from storage.index.migrate import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        return self.url.render_as_string(hide_password=True)


def _fdatasync(path: Path) -> OSError | None:
    """fdatasync ``path``; a log that is gone was checkpointed (with an fsync) and removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error
    try:
        os.fdatasync(fd)
    except OSError as error:
        return error
    finally:
        os.close(fd)
    return None


class _WriterQueue:
    """SQLite has one writer at a time, and a writer that finds the lock taken polls for it
    with sleeps of 1, 2, 5, 10... ms (its busy handler): under concurrent stores most of the
    wait is sleep after the lock was already free. Writers of this process queue on a thread
    lock, and processes on an ``flock`` of a file beside the database, which both wake the
    next writer the moment the last one commits. The busy timeout stays as the fallback for
    writers outside this queue (another tool, an older server)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by pysqlite
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # DICOM matching is case-sensitive except for PN (which compares a folded column);
        # with the default BINARY collation this also lets LIKE 'abc%' use an index.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        # straight to the driver: SQLAlchemy's statement machinery costs more than BEGIN
        connection.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if write else "BEGIN"
        )


