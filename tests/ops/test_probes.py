"""``/livez`` and ``/readyz`` (``/health``) of a real ``pacs serve``: each readiness check is
broken for real (the blob store's temporary area made unwritable, a DIMSE worker killed, the
PostgreSQL database dropped, its study table locked) and the probe answers 503 naming the
check, with nothing of paths, hosts or SQL, while liveness stays 200."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.server import PacsServer
from tests.support.wait import until

HEALTHY = {"index": "ok", "blob_store": "ok", "dimse": "ok", "http": "ok"}
LEAKS = ("/", "\\", "sqlite", "postgres", "select", "127.0.0.1", "tmp", "errno", "error")
"""What a probe's answer must never contain: a path, a driver or host, SQL, an error text."""


def _probe(server: PacsServer, path: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", timeout=30)


def _readiness(server: PacsServer) -> tuple[int, dict[str, Any]]:
    answer = _probe(server, "/readyz")
    return answer.status_code, answer.json()


def _unready(server: PacsServer, check: str, result: str) -> dict[str, Any]:
    """Poll /readyz until ``check`` says ``result``; the answer, checked for leaks."""

    def answer() -> dict[str, Any] | None:
        _, body = _readiness(server)
        return body if body["checks"][check] == result else None

    body: dict[str, Any] = until(f"/readyz says {check}: {result}", answer)
    response = _probe(server, "/readyz")
    assert response.status_code == 503
    text = response.text.lower()
    assert not [leak for leak in LEAKS if leak in text], text
    assert _probe(server, "/livez").status_code == 200
    assert _probe(server, "/livez").json() == {"status": "ok"}
    return body


def _ready_again(server: PacsServer) -> None:
    until("/readyz answers 200 again", lambda: _readiness(server) == (
        200, {"status": "ok", "checks": HEALTHY}))


def test_a_healthy_server_is_live_and_ready(server: PacsServer) -> None:
    live = _probe(server, "/livez")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert live.headers["cache-control"] == "no-store"
    for path in ("/readyz", "/health"):
        ready = _probe(server, path)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "checks": HEALTHY}


@pytest.fixture
def two_process_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    running = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                         extra_args=["--dimse-processes", "2"]).start()
    try:
        yield running
    finally:
        running.stop()


def test_an_unwritable_blob_store_is_not_ready(two_process_server: PacsServer) -> None:
    """The store's temporary area (where every store begins) replaced by a file: nothing can
    be written there, whoever the process runs as."""
    tmp = two_process_server.data_dir / "tmp"
    away = tmp.with_name("tmp-away")
    tmp.rename(away)
    tmp.write_bytes(b"not a folder")
    try:
        body = _unready(two_process_server, "blob_store", "failed")
        assert body == {"status": "unavailable",
                        "checks": {**HEALTHY, "blob_store": "failed"}}
        assert _probe(two_process_server, "/health").status_code == 503
    finally:
        tmp.unlink()
        away.rename(tmp)
    _ready_again(two_process_server)


def test_a_dead_dimse_worker_is_not_ready(two_process_server: PacsServer) -> None:
    (worker,) = two_process_server.children()
    os.kill(worker, signal.SIGKILL)

    body = _unready(two_process_server, "dimse", "failed")

    assert body["checks"] == {**HEALTHY, "dimse": "failed"}


@pytest.fixture
def postgres_server(tmp_path: Path, postgres_url: str) -> Iterator[PacsServer]:
    """A server on a database of its own, with a short readiness timeout."""
    running = PacsServer(data_dir=tmp_path / "data", database_url=postgres_url,
                         extra_args=["--dimse-processes", "1"],
                         start_env={"PACS_READINESS_TIMEOUT": "1"}).start()
    try:
        yield running
    finally:
        running.stop()


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@pytest.mark.postgres
def test_a_dropped_database_is_not_ready(postgres_server: PacsServer,
                                         postgres_admin: str) -> None:
    name = make_url(postgres_server.database_url).database
    with psycopg.connect(_libpq(postgres_admin), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    body = _unready(postgres_server, "index", "failed")

    assert body["checks"] == {**HEALTHY, "index": "failed"}
    assert str(name) not in str(body)
    scrape = _probe(postgres_server, "/metrics")  # --auth none: open, as every route
    assert scrape.status_code == 200
    assert 'pacs_index_errors_total{kind="unavailable"}' in scrape.text
    assert "pacs_qa_queue_studies" not in scrape.text  # left out, the scrape still answers


@pytest.mark.postgres
def test_a_locked_index_times_out_and_never_hangs_the_probe(
        postgres_server: PacsServer) -> None:
    """A transaction holding the study table against readers: the index check's query waits
    for it; the probe does not wait longer than the readiness timeout."""
    with psycopg.connect(_libpq(postgres_server.database_url)) as locker:
        locker.execute("LOCK TABLE study IN ACCESS EXCLUSIVE MODE")

        body = _unready(postgres_server, "index", "timeout")
        assert body["checks"] == {**HEALTHY, "index": "timeout"}
        again = _probe(postgres_server, "/readyz")  # the stuck check is waited on, not redone
        assert again.status_code == 503 and again.json()["checks"]["index"] == "timeout"
        locker.rollback()
    _ready_again(postgres_server)
