"""HAProxy from Debian in front of several ``pacs serve``: TCP for DIMSE, HTTP for DICOMweb,
on free loopback ports with a config in a temp dir; its runtime API on a Unix socket tells how
many connections each server got."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import PacsServer, free_port

HAPROXY = "/usr/sbin/haproxy"


def available() -> bool:
    return Path(HAPROXY).is_file() or shutil.which("haproxy") is not None


@dataclass
class Haproxy:
    """Round robin over ``servers``: each new DIMSE association and HTTP connection goes to
    the next live one; a server whose /health fails (or whose port refuses) is taken out."""

    workdir: Path
    servers: list[PacsServer]
    dimse_port: int = 0
    http_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    socket_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket_path = self.workdir / "haproxy.sock"

    def config(self) -> str:
        dimse = "\n".join(
            f"    server pacs{n} 127.0.0.1:{s.dimse_port} check inter 500ms fall 2 rise 2"
            for n, s in enumerate(self.servers))
        http = "\n".join(
            f"    server pacs{n} 127.0.0.1:{s.http_port} check inter 500ms fall 2 rise 2"
            for n, s in enumerate(self.servers))
        return f"""global
    stats socket {self.socket_path} mode 600 level admin
    maxconn 512

defaults
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend dimse
    mode tcp
    bind 127.0.0.1:{self.dimse_port}
    default_backend dimse

backend dimse
    mode tcp
    balance roundrobin
{dimse}

frontend dicomweb
    mode http
    bind 127.0.0.1:{self.http_port}
    default_backend dicomweb

backend dicomweb
    mode http
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
{http}
"""

    def start(self) -> Haproxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dimse_port, self.http_port = free_port(), free_port()
        path = self.workdir / "haproxy.cfg"
        path.write_text(self.config())
        check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stdout}{check.stderr}")
        with (self.workdir / "haproxy.log").open("ab") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(self.workdir / 'haproxy.log').read_text()}")
            if self.socket_path.exists() and self.servers_up("dimse") == len(self.servers):
                return self
            time.sleep(0.05)
        raise RuntimeError("haproxy did not see every server up within 10 s")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stats(self) -> list[dict[str, str]]:
        """``show stat``: a row per frontend, server and backend."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as api:
            api.settimeout(5)
            api.connect(str(self.socket_path))
            api.sendall(b"show stat\n")
            chunks = []
            while chunk := api.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return list(csv.DictReader(text.splitlines()))

    def sessions(self, backend: str) -> dict[str, int]:
        """Connections each server of ``backend`` was given so far (``stot``)."""
        return {row["svname"]: int(row["stot"]) for row in self.stats()
                if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    def servers_up(self, backend: str) -> int:
        return sum(1 for row in self.stats() if row["pxname"] == backend
                   and row["svname"] not in ("FRONTEND", "BACKEND")
                   and row["status"].startswith("UP"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
