"""Servers sharing a data folder: each stages uploads in a folder of its own under tmp/, and a
server's start sweeps its own and those of servers that are gone, never a live one's uploads
in flight."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import PacsServer


def _database(database_url: str, tmp_path: Path, name: str) -> str:
    """PostgreSQL: the one index the servers share. SQLite: an index file each (one SQLite
    file is for one server); the test is about the shared data folder."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    return database_url


@pytest.fixture
def servers() -> Iterator[list[PacsServer]]:
    started: list[PacsServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def _folder(server: PacsServer) -> Path:
    """The listening process's staging folder, named by its default node id (its DIMSE
    workers have their own)."""
    assert server.process is not None
    return server.data_dir / "tmp" / f"{socket.gethostname()[:40]}-{server.process.pid}"


def test_a_start_sweeps_only_the_folders_of_servers_that_are_gone(
    tmp_path: Path, database_url: str, servers: list[PacsServer]
) -> None:
    shared = tmp_path / "data"
    first = PacsServer(data_dir=shared, database_url=_database(database_url, tmp_path, "a"))
    servers.append(first.start())
    in_flight = _folder(first) / "upload.part"
    in_flight.write_bytes(b"a store under way on the first server")

    second = PacsServer(data_dir=shared, database_url=_database(database_url, tmp_path, "b"),
                        extra_args=["--dimse-processes", "2"],
                        start_env={"PACS_NODE_ID": "replica-b"})
    servers.append(second.start())

    assert in_flight.read_bytes() == b"a store under way on the first server"
    second_folders = [shared / "tmp" / "replica-b", shared / "tmp" / "replica-b.1"]
    assert all(folder.is_dir() for folder in second_folders)  # its listener's, its worker's

    first.kill9()  # its folder stays, with the upload it never finished
    assert in_flight.exists()
    third = PacsServer(data_dir=shared, database_url=_database(database_url, tmp_path, "c"))
    servers.append(third.start())

    assert not in_flight.parent.exists()  # swept: its server is gone
    assert all(folder.is_dir() for folder in second_folders) and _folder(third).is_dir()
    assert third.stop() == 0 and second.stop() == 0
    assert list((shared / "tmp").iterdir()) == []  # a clean stop removes its folder
