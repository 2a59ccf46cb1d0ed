"""Fixtures: a database per test (SQLite, and PostgreSQL when PACS_TEST_DATABASE_URL is set),
a running ``pacs serve``, and generated DICOM files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pacs.services.codecs import use_chosen_decoders
from storage.index import Index
from tests.support.server import PacsServer

POSTGRES_ENV = "PACS_TEST_DATABASE_URL"
TRANSPORT_ENV = "PACS_DIMSE_TRANSPORT"  # inherited by every ``pacs serve`` the tests start
_SESSION = uuid.uuid4().hex[:8]


def dimse_transport() -> str:
    return os.environ.get(TRANSPORT_ENV, "fast")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``PACS_DIMSE_TRANSPORT=stock`` (``make test-stock``), tests of what only the fast
    transport does are skipped, each with the reason its marker gives."""
    if dimse_transport() != "stock":
        return
    for item in items:
        marker = item.get_closest_marker("fast_transport")
        if marker is not None:
            why = marker.args[0] if marker.args else "the fast transport's"
            item.add_marker(pytest.mark.skip(reason=f"stock pynetdicom: {why}"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"DIMSE transport of the servers under test: {dimse_transport()}"


@pytest.fixture(scope="session", autouse=True)
def chosen_decoders() -> None:
    """The decoders the composition root chooses (pacs.services.codecs), for the tests that
    call services directly, not through ``pacs serve``."""
    use_chosen_decoders()


def _postgres_base() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """Checks once that PostgreSQL answers: unreachable is a failure when it was asked for."""
    base = _postgres_base()
    if base is None:
        pytest.skip(f"{POSTGRES_ENV} is not set: PostgreSQL tests are off")
    import psycopg

    try:
        with psycopg.connect(_libpq(base), autocommit=True, connect_timeout=5):
            pass
    except psycopg.OperationalError as error:
        pytest.fail(f"{POSTGRES_ENV}={base} is set but PostgreSQL cannot be reached: {error}")
    yield base


def _libpq(url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (runs never see each other's rows)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"pacs_test_{_SESSION}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    with fresh_postgres_database(postgres_admin) as url:
        yield url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like ``database_url``, shared by the tests of one module (an archive filled once)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('index') / 'index.sqlite'}"
        return
    with fresh_postgres_database(str(request.getfixturevalue("postgres_admin"))) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and, when switched on, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def index(database_url: str) -> Iterator[Index]:
    """An empty index with the newest schema, on each database backend."""
    built = Index(database_url)
    built.upgrade()
    try:
        yield built
    finally:
        built.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


def _running(tmp_path: Path, url: str) -> Iterator[PacsServer]:
    running = PacsServer(data_dir=tmp_path / "data", database_url=url).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[PacsServer]:
    """A running ``pacs serve`` on SQLite and, when switched on, PostgreSQL."""
    yield from _running(tmp_path, database_url)


@pytest.fixture
def sqlite_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    """A running ``pacs serve`` on SQLite only (for tests about DIMSE, not the database)."""
    yield from _running(tmp_path, sqlite_url)


@pytest.fixture
def lenient_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the composition root sets it: odd values are read, not warned about (for modules
    that store through the services in this process: ``usefixtures("lenient_reading")``)."""
    import pydicom

    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
