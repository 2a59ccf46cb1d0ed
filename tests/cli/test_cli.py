"""The ``pacs`` command line: flag validation, import, check, db upgrade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage.index import Index
from storage.index.migrate import pending_changes
from tests.factories import datasets as f


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dimse-port", "70000"], "--dimse-port"),
        (["--http-port", "-1"], "--http-port"),
        (["--dimse-port", "eleven"], "--dimse-port"),
        (["--ae-title", "A_TITLE_LONGER_THAN_16"], "--ae-title"),
        (["--peer", "WORKSTATION"], "--peer"),
        (["--peer", "WS=127.0.0.1:99999"], "--peer"),
        (["--peer", "WS=127.0.0.1:104", "--peer", "WS=127.0.0.1:105"], "--peer"),
        (["--qa", "sometimes"], "--qa"),
        (["--oidc-issuer", "https://idp.example.org/realms/pacs"], "--oidc-audience"),
        (["--oidc-issuer", "http://idp.example.org", "--oidc-audience", "pacs"], "--oidc-issuer"),
        (["--oidc-audience", "pacs"], "--oidc-audience"),
        (["--oidc-issuer", "https://idp.example.org/realms/pacs", "--oidc-audience", "pacs",
          "--oidc-client-secret", "s3cret"], "--oidc-client-secret: needs --oidc-client-id"),
        (["--oidc-issuer", "https://idp.example.org/realms/pacs", "--oidc-audience", "pacs",
          "--oidc-client-id", "pacs-ui", "--oidc-redirect-uri", "/ui/sign-in/callback"],
         "--oidc-redirect-uri"),
        (["--dimse-access", "everyone"], "--dimse-access"),
        (["--peer", "WS=work_station:104"], "--peer"),
        (["--modality", "A_TITLE_LONGER_THAN_16"], "--modality"),
    ],
)
def test_bad_serve_flag_exits_nonzero_with_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = pacs("serve", "--data-dir", str(tmp_path / "d"), *args)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pacs: error: ") and message in lines[0]
    assert not (tmp_path / "d").exists()


def test_bad_env_value_is_reported_like_a_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={"PACS_DIMSE_PORT": "123456", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--dimse-port" in result.stderr and "out of range" in result.stderr


def test_import_reports_stored_present_not_dicom_and_failed(
    tmp_path: Path, database_url: str
) -> None:
    folder = tmp_path / "in"
    for n in range(3):
        f.write_part10(f.ct_instance(PatientID="IMP-1", InstanceNumber=n + 1),
                       folder / "sub" / f"{n}.dcm")
    (folder / "notes.txt").write_bytes(f.not_dicom_bytes())
    (folder / "cut.dcm").write_bytes(f.truncated_bytes())
    (folder / "junk.dcm").write_bytes(f.corrupt_bytes())
    data = ["--data-dir", str(tmp_path / "data"), "--database-url", database_url]

    first = pacs("import", str(folder), *data)
    again = pacs("import", str(folder / "sub"), *data)

    assert first.returncode == 1
    assert "stored: 3, already present: 0, not DICOM: 1, failed: 2" in first.stdout
    assert "cut.dcm" in first.stdout and "truncated" in first.stdout
    assert "junk.dcm" in first.stdout
    assert again.returncode == 0
    assert "stored: 0, already present: 3, not DICOM: 0, failed: 0" in again.stdout
    check = pacs("check", *data)
    assert check.returncode == 0 and "instances indexed: 3, files stored: 3" in check.stdout


def test_import_of_a_missing_path_is_an_error(tmp_path: Path) -> None:
    result = pacs("import", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_check_finds_missing_orphan_and_mismatch_and_repairs(
    tmp_path: Path, database_url: str
) -> None:
    folder = tmp_path / "in"
    for n in range(4):
        f.write_part10(f.ct_instance(PatientID="CHK-1", InstanceNumber=n + 1), folder / f"{n}.dcm")
    data = ["--data-dir", str(tmp_path / "data"), "--database-url", database_url]
    assert pacs("import", str(folder), *data).returncode == 0
    files = sorted((tmp_path / "data" / "objects").glob("*/*"))
    assert len(files) == 4
    files[0].unlink()  # missing
    files[1].write_bytes(files[1].read_bytes() + b"x")  # size and hash mismatch
    orphan = tmp_path / "data" / "objects" / "ab" / ("ab" + "0" * 62)
    orphan.write_bytes(b"nobody's")

    report = pacs("check", *data)
    repaired = pacs("check", "--repair", "--orphan-grace", "0", *data)
    after = pacs("check", *data)

    assert report.returncode == 1
    assert "missing file" in report.stdout and "orphan file" in report.stdout
    assert "mismatch" in report.stdout and "INCONSISTENT" in report.stdout
    assert "1 index rows removed, 1 orphan files removed" in repaired.stdout
    assert not orphan.exists()
    assert after.returncode == 1  # the mismatched file is reported, never deleted
    assert "missing file" not in after.stdout and "orphan" not in after.stdout
    assert "instances indexed: 3" in after.stdout


def test_db_upgrade_builds_the_schema_of_the_models(tmp_path: Path, database_url: str) -> None:
    result = pacs("db", "upgrade", "--data-dir", str(tmp_path), "--database-url", database_url)

    assert result.returncode == 0, result.stderr
    index = Index(database_url)
    try:
        assert pending_changes(index.engine) == []
    finally:
        index.dispose()


def test_serve_on_a_dimse_port_in_use_exits_1_with_a_message(
    tmp_path: Path, sqlite_url: str
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pacs("serve", "--data-dir", str(tmp_path / "d"), "--database-url", sqlite_url,
                      "--dimse-port", str(port), "--http-port", "0")

    assert result.returncode == 1
    assert f"cannot listen for DIMSE on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_dimse_workers_do_not_load_the_web_stack() -> None:
    """A DIMSE worker imports ``pacs.serve`` only: the HTTP front end (FastAPI, uvicorn) is
    imported by ``serve`` itself, so the workers stay about 18 MB smaller each."""
    probe = ("import sys, pacs.serve; "
             "print(sorted(m for m in ('uvicorn', 'fastapi', 'starlette', 'dicomweb') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"
