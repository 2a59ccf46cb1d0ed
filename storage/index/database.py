"""Engine, SQLite pragmas, units of work, and schema upgrades.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and a write unit of work
starts with ``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing on
a read-to-write upgrade. LIKE is case-sensitive, as on PostgreSQL. PostgreSQL runs through
psycopg 3 at READ COMMITTED.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from storage.index.repository import Repository

_WRITE = "pacs_write"
BUSY_TIMEOUT_MS = 60_000


class IndexUnavailable(RuntimeError):
    """The database cannot be reached or is locked beyond the busy timeout."""


class IndexDataError(ValueError):
    """The database refused the values (a constraint or a value it cannot hold)."""


class Index:
    """The index database. Thread-safe: one connection per unit of work, from a pool."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 8) -> None:
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
        if self.is_sqlite:
            _configure_sqlite(self.engine, sqlite_synchronous)

    @contextmanager
    def unit_of_work(self, *, write: bool = False) -> Iterator[Repository]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        try:
            with self.engine.connect() as connection:
                if write:
                    connection.execution_options(**{_WRITE: True})
                with connection.begin():
                    yield Repository(connection)
        except (OperationalError, InterfaceError) as exc:
            raise IndexUnavailable(str(exc.orig)) from exc
        except DBAPIError as exc:
            raise IndexDataError(str(exc.orig)) from exc

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from storage.index.migrate import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        return self.url.render_as_string(hide_password=True)


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
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


