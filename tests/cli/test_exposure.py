"""``pacs serve`` refuses to listen where others can reach it while HTTP needs no
authentication (one line, exit 2), unless ``--insecure`` says so; loopback needs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pacs.settings import Settings


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--http-host", "0.0.0.0"], {}, "--http-host 0.0.0.0"),
    (["--dimse-host", "0.0.0.0"], {}, "--dimse-host 0.0.0.0"),
    (["--http-host", "::"], {}, "--http-host ::"),
    ([], {"PACS_DIMSE_HOST": "192.0.2.7"}, "--dimse-host 192.0.2.7"),
    (["--http-host", "0.0.0.0", "--auth", "none"], {}, "--http-host 0.0.0.0"),
])
def test_serve_refuses_a_reachable_listener_without_auth(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--http-port", "0", "--dimse-port", "0", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"pacs: error: {named} is reachable from the network but "
                               "--auth is none")
    assert "--insecure" in lines[0] and "--auth required" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_what_may_start() -> None:
    assert Settings().exposed_without_auth is None  # make run: loopback, no set-up
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert Settings(http_host=host, dimse_host=host).exposed_without_auth is None
    assert Settings(http_host="0.0.0.0", insecure=True).exposed_without_auth is None
    assert Settings(http_host="0.0.0.0", dimse_host="0.0.0.0",
                    auth="required").exposed_without_auth is None
    assert Settings(dimse_host="10.1.2.3").exposed_without_auth is not None
    assert Settings(http_host="pacs.example.org").exposed_without_auth is not None
