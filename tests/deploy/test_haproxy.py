"""deploy/haproxy/haproxy.cfg, the load balancer of docker-compose.yml: HAProxy itself checks
it (``haproxy -c``: syntax, keywords, modes), and it balances what the compose file says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


def _sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in CONFIG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="haproxy is not installed (make haproxy: apt-get install haproxy)")
def test_haproxy_accepts_the_config() -> None:
    checked = subprocess.run(["haproxy", "-c", "-f", str(CONFIG)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout
    assert "WARNING" not in checked.stdout + checked.stderr


def test_dimse_is_tcp_and_http_is_http_both_checked_on_readyz() -> None:
    sections = _sections()

    assert "mode tcp" in sections["frontend dimse"] and "bind :11112" in sections["frontend dimse"]
    assert "mode http" in sections["frontend http"] and "bind :8042" in sections["frontend http"]
    for backend, port in (("backend pacs_dimse", 11112), ("backend pacs_http", 8042)):
        lines = sections[backend]
        assert "option httpchk" in lines
        assert any(re.fullmatch(r"http-check send meth GET uri /readyz( .*)?", line)
                   for line in lines)
        assert "http-check expect status 200" in lines
        assert f"server-template pacs 8 pacs:{port}" in lines
    dimse_servers = next(line for line in sections["backend pacs_dimse"]
                         if line.startswith("default-server"))
    assert "check port 8042" in dimse_servers  # DIMSE follows the replica's HTTP readiness
