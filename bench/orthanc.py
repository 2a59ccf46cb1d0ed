"""Run a throw-away Orthanc for the ingest benchmark, plus the process helpers the bench shares.

Orthanc is the reference the issue's targets are stated against, so it must run in a known,
comparable configuration: our own JSON config (never /etc/orthanc), no plugins (Debian's
package ships some in /usr/share/orthanc/plugins, which would add work per instance), no
storage compression, SQLite index (the default), fresh storage and index folders in a temp dir,
ports of our own so a system Orthanc (Debian starts one on 4242/8042 where it can) neither
answers in its place nor gets in the way.

Orthanc 1.10 cannot bind to one address: it listens on all interfaces. The config makes that
harmless for the run: HTTP refuses non-local clients (``RemoteAccessAllowed``), and C-STORE is
only accepted from the benchmark's own AE on 127.0.0.1 (``DicomAlwaysAllowStore`` off,
``DicomCheckModalityHost`` on).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
ORTHANC_PATHS = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


# ----------------------------------------------------------------------- process helpers


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel picks it, so parallel runs differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int) -> bool:
    """Whether something listens on loopback:`port` (used to wait for storescp)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    """GET `url` and decode JSON; raises on any HTTP or network error."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether GET `url` answers 200 now (``context``: the TLS client context of https)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(ready: Any, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Poll `ready()` until true; fail early if `proc` died, so a crash is not a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")


def start_process(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group with output to `log_path`.

    Its own group lets ``stop_process`` end the server and any child it forked (storescp
    --fork) by the id of the process we started, never by name.
    """
    log: IO[bytes] = open(log_path, "ab")
    try:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group we started, SIGKILL it after `timeout`; always reaps."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # children forked by the server (storescp --fork) may outlive it: end them too
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the pid of the process we started
    except (ProcessLookupError, PermissionError):
        pass


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM (peak resident set) of `pid` and its live descendants, in bytes.

    Read before the server is stopped. A sum of per-process peaks: exact for one process,
    an upper bound if a server had helper processes.
    """
    total_kib = 0
    found = False
    for p in [pid, *_descendants(pid)]:
        kib = _status_kib(p, "VmHWM")
        if kib is not None:
            total_kib += kib
            found = True
    return total_kib * 1024 if found else None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, /proc/PID/stat) of `pid` and its live descendants, with the
    children each has reaped (cutime, cstime), in seconds.

    Read before and after a run: the difference is what the run cost the server, its worker
    processes (pacs) and the per-association children it forked and reaped (storescp --fork)
    included.
    """
    ticks = 0
    found = False
    for p in [pid, *_descendants(pid)]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 of proc(5), the state
        ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def _status_kib(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def processes_named(name: str) -> list[int]:
    """PIDs whose command name is `name`: only to warn about them, never to signal them."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# -------------------------------------------------------------------------------- Orthanc


def find_orthanc() -> str | None:
    """Path of the Orthanc binary, or None."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_PATHS if os.access(p, os.X_OK)), None)


def ensure_orthanc(log: Any = print) -> str | None:
    """Find Orthanc; as root, ``apt-get install -y orthanc`` once if it is missing."""
    found = find_orthanc()
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    log("orthanc: not installed; running apt-get install -y orthanc")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "orthanc"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "orthanc"],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, check=False)
        if argv[1] == "install" and result.returncode == 0:
            break
    return find_orthanc()


def find_dicomweb_plugin() -> str | None:
    """Path of Debian's DICOMweb plugin (package ``orthanc-dicomweb``), or None."""
    if os.path.isfile(DICOMWEB_PLUGIN):
        return DICOMWEB_PLUGIN
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True,
                                text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((p for p in listed.split() if p.endswith("libOrthancDicomWeb.so")), None)


def orthanc_config(
    work: Path, http_port: int, dicom_port: int, aet: str, calling_aet: str
) -> dict[str, Any]:
    """A minimal, isolated configuration (see the module docstring for why each choice)."""
    return {
        "Name": "pacs-bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "StorageCompression": False,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"bench": [calling_aet, LOOPBACK, 104]},
        "SaveJobs": False,
    }


@dataclass
class Orthanc:
    """One Orthanc process on free loopback ports with its data under `work`."""

    binary: str
    work: Path
    aet: str = "ORTHANC"
    calling_aet: str = "BENCHSCU"
    env: dict[str, str] | None = None  # e.g. TCP_NODELAY=1, which Orthanc's DCMTK reads
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)  # merged over orthanc_config()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def start(self) -> None:
        """Write the config, start Orthanc, wait until GET /system answers."""
        self.work.mkdir(parents=True, exist_ok=True)
        config = orthanc_config(
            self.work, self.http_port, self.dicom_port, self.aet, self.calling_aet
        ) | self.extra_config
        config_path = self.work / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.proc = start_process(
            [self.binary, str(config_path)], self.work / "orthanc.log", env=self.env, cwd=self.work
        )
        wait_until(lambda: http_ok(f"{self.url}/system"), self.proc, START_TIMEOUT_S, "Orthanc")

    def version(self) -> str:
        return str(http_get_json(f"{self.url}/system").get("Version", "?"))

    def instance_count(self) -> int:
        return int(http_get_json(f"{self.url}/statistics")["CountInstances"])

    def peak_rss_bytes(self) -> int | None:
        return peak_rss_bytes(self.proc.pid) if self.proc else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.work / "orthanc.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
