"""deploy/haproxy/haproxy.cfg, the load balancer of docker-compose.yml: HAProxy itself checks
it (``haproxy -c``: syntax, keywords, modes), it says what the compose file needs, and, run by
Debian's HAProxy on loopback in front of two real ``pacs serve``, it passes associations and
HTTP requests to ready replicas only and limits the connections of one client address."""

from __future__ import annotations

import re
import select
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import dcmtk
from tests.support.server import PacsServer, free_port
from tests.support.wait import until

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


# -- the config at work: HAProxy in front of two real `pacs serve` ---------------------------

def _loopback_config(http: int, dimse: int, health: int, replicas: list[PacsServer],
                     check_path: str) -> str:
    """The compose config with loopback addresses: its listeners on free ports, the two
    replicas named instead of found in Docker's DNS, nothing else changed."""
    kept: list[str] = []
    skipping = False
    for line in CONFIG.read_text().splitlines():
        if line and not line[0].isspace():
            skipping = line.startswith("resolvers ")
        if skipping:
            continue
        line = line.replace(" resolvers docker init-addr none", "").replace(" port 8042", "")
        line = line.replace("bind :11112", f"bind 127.0.0.1:{dimse}")
        line = line.replace("bind :8042", f"bind 127.0.0.1:{http}")
        line = line.replace("bind :8405", f"bind 127.0.0.1:{health}")
        line = line.replace("uri /readyz", f"uri {check_path}")
        if "server-template pacs 8 pacs:11112" in line:
            line = "\n".join(f"    server pacs{i} 127.0.0.1:{replica.dimse_port} "
                             f"port {replica.http_port}" for i, replica in enumerate(replicas))
        elif "server-template pacs 8 pacs:8042" in line:
            line = "\n".join(f"    server pacs{i} 127.0.0.1:{replica.http_port}"
                             for i, replica in enumerate(replicas))
        kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[PacsServer]]:
    started = []
    try:
        for name in ("one", "two"):
            started.append(PacsServer(data_dir=tmp_path / name,
                                      database_url=f"sqlite:///{tmp_path / name}.sqlite").start())
        yield started
    finally:
        for replica in started:
            replica.stop()


@dataclass
class Balancer:
    http: int
    dimse: int
    process: subprocess.Popen[bytes]

    def get(self, path: str) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http}{path}", timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def echo(self) -> bool:
        return dcmtk.echoscu(self.dimse).returncode == 0


@pytest.fixture
def balancer(tmp_path: Path, replicas: list[PacsServer]) -> Iterator[Balancer]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make haproxy: apt-get install haproxy)")
    # GET /readyz comes with issue 15's probes; until a replica serves it, /health (which
    # stays its alias) stands in, so that the balancing is checked either way
    ready = httpx.get(f"{replicas[0].base_url}/readyz", timeout=10).status_code
    check_path = "/readyz" if ready != 404 else "/health"
    http, dimse, health = free_port(), free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(_loopback_config(http, dimse, health, replicas, check_path))
    with (tmp_path / "haproxy.log").open("wb") as log:
        process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        running = Balancer(http=http, dimse=dimse, process=process)
        until("HAProxy answers through a replica", lambda: running.get("/health") == 200)
        yield running
    finally:
        process.terminate()
        process.wait(30)


def test_haproxy_balances_dimse_and_http_over_ready_replicas(
    balancer: Balancer, replicas: list[PacsServer]
) -> None:
    assert balancer.echo()  # an association through the TCP frontend
    assert balancer.get("/health") == 200

    replicas[0].stop()  # the other replica takes all: after the checks see it, nothing fails
    until("every request served by the replica left",
          lambda: all(balancer.get("/health") == 200 for _ in range(10))
          and all(balancer.echo() for _ in range(4)))

    replicas[1].stop()
    until("HAProxy refuses once no replica is ready", lambda: balancer.get("/health") == 503)
    assert not balancer.echo()


def test_haproxy_limits_dimse_connections_per_client_address(balancer: Balancer) -> None:
    """17 connections from one address: HAProxy closes one of them (whichever it accepted
    last, not necessarily the last made) and passes 16 on, each waiting for its A-ASSOCIATE-RQ
    (pacs closes them after PACS_DIMSE_READ_TIMEOUT, 30 s)."""
    held = [socket.create_connection(("127.0.0.1", balancer.dimse)) for _ in range(17)]
    try:
        closed = until("HAProxy closes the connection over the limit", lambda: _readable(held))
        assert len(closed) == 1
        (sock,) = closed
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        for sock in held:
            sock.close()


def _readable(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets with something to read: here, only an end of stream."""
    ready, _, _ = select.select(sockets, [], [], 0)
    return ready
