"""A real ``pacs serve`` in a subprocess on free loopback ports, polled on ``/health``."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pacs.serve import Services, open_services
from pacs.settings import Settings

STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PacsServer:
    data_dir: Path
    database_url: str
    extra_args: list[str] = field(default_factory=list)
    ae_title: str = "PACS"
    dimse_port: int = 0
    http_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    start_env: dict[str, str] = field(default_factory=dict)
    tls_ca: Path | None = None
    """The CA file a client trusts when the server speaks HTTPS (``--tls-cert``)."""
    log_name: str | None = None
    """The log's file name beside the data folder (several servers on one folder)."""
    blob_store: str | None = None
    """``--blob-store`` (``s3://BUCKET/PREFIX``); the file store under the data folder if None."""
    hl7: bool = False
    """Listen for HL7 orders (``--hl7-port`` on a free port, then in :attr:`hl7_port`)."""
    hl7_port: int = 0

    def start(self) -> PacsServer:
        self.dimse_port = free_port()
        self.http_port = free_port()
        self.hl7_port = free_port() if self.hl7 else 0
        self.log_path = self.data_dir.parent / (self.log_name or f"{self.data_dir.name}-serve.log")
        args = [
            sys.executable, "-m", "pacs.cli", "serve",
            "--data-dir", str(self.data_dir),
            "--ae-title", self.ae_title,
            "--dimse-port", str(self.dimse_port),
            "--http-port", str(self.http_port),
            "--database-url", self.database_url,
            *(["--blob-store", self.blob_store] if self.blob_store else []),
            *(["--hl7-port", str(self.hl7_port)] if self.hl7 else []),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.start_env},
                start_new_session=True,  # its own process group, as under a service manager
            )
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pacs serve exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                health = httpx.get(f"{self.base_url}/health", timeout=1, verify=self.verify)
                if health.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"pacs serve not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    @property
    def scheme(self) -> str:
        """``https`` when the server was given a certificate, by flag or env var."""
        tls = "--tls-cert" in self.extra_args or "PACS_TLS_CERT" in self.start_env
        return "https" if tls else "http"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify=``: a context trusting ``tls_ca`` under HTTPS."""
        if self.scheme == "https" and self.tls_ca is not None:
            return ssl.create_default_context(cafile=str(self.tls_ca))
        return True

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server (by PID) and wait; returns its exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def children(self) -> list[int]:
        """PIDs of the server's child processes (its DIMSE workers among them)."""
        if self.process is None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def stop_group(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal every process of the server's group at once (what systemd does)."""
        assert self.process is not None
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, database_url=self.database_url,
                        blob_store=self.blob_store)

    @contextmanager
    def services(self) -> Iterator[Services]:
        """The server's storage, opened beside it (for checking rows and files)."""
        with open_services(self.settings(), upgrade=False) as services:
            yield services

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``pacs`` with this server's data dir and database."""
        return subprocess.run(
            [sys.executable, "-m", "pacs.cli", *args, "--data-dir", str(self.data_dir),
             "--database-url", self.database_url],
            capture_output=True, text=True, timeout=600,
        )


def token(server: PacsServer, name: str, role: str, *extra: str) -> str:
    """A new API token made by ``pacs token create`` on the server's index: its secret."""
    made = server.cli("token", "create", "--name", name, "--role", role, *extra)
    assert made.returncode == 0, made.stderr
    (secret,) = [line for line in made.stdout.split() if line.startswith("pacs_")]
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The PIDs still alive after waiting up to ``timeout`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def own_index(database_url: str, folder: Path) -> str:
    """For a second server beside another in one module: the same PostgreSQL database (several
    servers share one), or a SQLite index of its own in ``folder`` (one server per SQLite
    index: a second is refused)."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{folder / 'index.sqlite'}"
    return database_url
