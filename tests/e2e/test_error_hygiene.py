"""Error Comments and HTTP error bodies name the problem, never an internal host, port, path,
SQL or driver message; those go to the server log.

PostgreSQL is made unreachable for one test database only (connections refused and the open
ones ended), never by stopping the server other tests share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy.engine import make_url

from tests.conftest import _libpq, fresh_postgres_database
from tests.factories.datasets import ct_instance, make_uid, to_part10_bytes, write_part10
from tests.support.server import PacsServer

BOUNDARY = "hygiene-boundary"


def _store(port: int, path: Path) -> tuple[int, str]:
    """One C-STORE from pynetdicom: (status, Error Comment)."""
    ae = AE(ae_title="HYGIENE")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(path)
        return int(answer.Status), str(answer.get("ErrorComment", "") or "")
    finally:
        assoc.release()


def _stow(server: PacsServer, data: bytes) -> httpx.Response:
    body = (f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{BOUNDARY}--\r\n".encode())
    return httpx.post(
        f"{server.base_url}/dicom-web/studies", content=body, timeout=30,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                 f"boundary={BOUNDARY}",
                 "Accept": "application/dicom+json"})


def _told(answer: httpx.Response) -> str:
    """What an HTTP answer tells its client: the body and the Warning header (STOW-RS puts
    each failed part's reason there, PS3.18 10.5.3)."""
    return f"{answer.headers.get('warning', '')} {answer.text}"


def _names_no_internals(text: str, *internals: str) -> None:
    lowered = text.lower()
    for word in ("127.0.0.1", "5432", "psycopg", "postgres", "sql", "errno", *internals):
        assert word.lower() not in lowered, f"{word!r} in {text!r}"


@contextmanager
def _unreachable(admin_url: str, database: str) -> Iterator[None]:
    """Refuse new connections to ``database`` and end the open ones, then allow them again."""
    import psycopg

    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


@pytest.mark.postgres
def test_postgres_unreachable_answers_a700_and_503_without_its_address_or_message(
    tmp_path: Path, postgres_admin: str,
) -> None:
    with fresh_postgres_database(postgres_admin) as url:
        database = str(make_url(url).database)
        server = PacsServer(data_dir=tmp_path / "data", database_url=url).start()
        try:
            first = write_part10(ct_instance(PatientID="PG-DOWN"), tmp_path / "first.dcm")
            assert _store(server.dimse_port, first) == (0x0000, "")
            second = write_part10(ct_instance(PatientID="PG-DOWN"), tmp_path / "second.dcm")
            with _unreachable(postgres_admin, database):
                status, comment = _store(server.dimse_port, second)
                search = httpx.get(f"{server.base_url}/dicom-web/studies", timeout=30)
                stow = _stow(server, to_part10_bytes(ct_instance(PatientID="PG-DOWN")))
        finally:
            server.stop()

    assert status == 0xA700
    assert comment == "the index is unavailable"
    _names_no_internals(comment, database, str(tmp_path))
    assert search.status_code == 503
    assert search.json() == {"error": "the index is unavailable"}
    _names_no_internals(search.text, database, str(tmp_path))
    assert stow.status_code == 409, stow.text
    assert "the index is unavailable" in _told(stow)
    _names_no_internals(_told(stow), database, str(tmp_path))
    # the details are in the server's log, for its operator
    assert database in server.log()


def test_an_unexpected_os_error_tells_the_peer_no_path(tmp_path: Path, sqlite_url: str) -> None:
    """Every blob folder of an empty store replaced by a plain file: placing a blob fails with
    ENOTDIR, whose message names both paths. STOW-RS says "processing failure", C-STORE
    answers a failure status, and neither carries a path; 4xx answers carry none either."""
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url).start()
    try:
        objects = server.data_dir / "objects"
        for number in range(256):
            folder = objects / f"{number:02x}"
            if folder.is_dir():
                folder.rmdir()  # empty: nothing is stored yet
            folder.write_bytes(b"")
        stow = _stow(server, to_part10_bytes(ct_instance(PatientID="NOT-A-DIR")))
        status, comment = _store(server.dimse_port, write_part10(
            ct_instance(PatientID="NOT-A-DIR"), tmp_path / "one.dcm"))
        missing = httpx.get(
            f"{server.base_url}/dicom-web/studies/{make_uid('hygiene', 'none')}/metadata",
            timeout=10)
        malformed = httpx.get(f"{server.base_url}/dicom-web/studies",
                              params={"StudyDate": "2024-99-99"}, timeout=10)
        garbage = _stow(server, b"not DICOM at all " * 10)
    finally:
        server.stop()

    assert stow.status_code == 409, stow.text
    assert "processing failure" in _told(stow)
    assert status not in (0x0000, 0xFF00)
    for text in (_told(stow), comment, _told(missing), _told(malformed), _told(garbage)):
        _names_no_internals(text, str(tmp_path), "/objects/", "/tmp/")
    assert missing.status_code == 404
    assert malformed.status_code == 400
    assert garbage.status_code == 409
    assert "NotADirectoryError" in server.log()

