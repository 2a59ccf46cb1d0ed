"""The PostgreSQL driver is an extra (``pacs[postgres]``): a PostgreSQL URL without it ends
the command with one line naming the extra (exit 2, like any bad setting), before anything
starts, and without repeating the URL (it may hold a password). The driver is hidden from a
real ``pacs`` process (``sys.modules["psycopg"] = None``: not importable, as when it was never
installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

URL = "postgresql+psycopg://pacs:s3cret@db.internal:5432/pacs"
WITHOUT_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None; "
    "from pacs.cli import main; sys.argv[0] = 'pacs'; main()"
)


def pacs_without_psycopg(*args: str, env: dict[str, str] | None = None,
                         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_PSYCOPG, *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("db", "upgrade", "--database-url", URL), {}),
        (("serve", "--dimse-port", "0", "--http-port", "0"), {"PACS_DATABASE_URL": URL}),
        (("db", "upgrade", "--database-url", "postgresql://pacs@db.internal/pacs"), {}),
    ],
    ids=["flag", "environment", "no-driver-named"],
)
def test_postgresql_without_the_driver_names_the_extra(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    result = pacs_without_psycopg(*args, "--data-dir", str(data), env=env)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "pacs: error: --database-url: PostgreSQL needs the psycopg driver, which is not "
        "installed: pip install 'pacs[postgres]' (URLs as postgresql+psycopg://USER@HOST/DB)"
    ]
    assert "db.internal" not in result.stderr and "s3cret" not in result.stderr
    assert not data.exists()  # refused before anything was made


def test_sqlite_needs_no_extra(tmp_path: Path) -> None:
    result = pacs_without_psycopg("db", "upgrade", "--data-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "index schema is up to date" in result.stdout
    assert (tmp_path / "index.sqlite").is_file()
