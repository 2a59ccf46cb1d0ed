"""Ingest benchmark: C-STORE throughput of pacs against DCMTK storescp and Orthanc.

    python -m bench.ingest                       # 2,000 small + 300 CT 512x512, all targets
    python -m bench.ingest --small 200 --ct 30   # quick run
    python -m bench.ingest --rss-run 10000       # plus peak RSS of pacs after 10,000 instances
    python -m bench.ingest --no-tls              # without the DICOM TLS runs
    python -m bench.ingest --no-s3               # without the runs with blobs in S3 (moto)

Why it is built this way (bench/README.md has the long version):

* The client is DCMTK ``storescu`` for every target, so only the server differs. One storescu
  process sends all its files over ONE association (it negotiates once per invocation); the
  4-association shape runs 4 storescu processes at once on 4 slices of the file list and
  reports total instances / wall time.
* storescu proposes exactly the (SOP class, transfer syntax) pairs found in the corpus, from a
  generated ``-xf`` profile, so no target pays for conversion or a wider negotiation.
* ``TCP_NODELAY=1`` is set for storescu and for the DCMTK-based servers (storescp, Orthanc):
  Debian's DCMTK keeps Nagle's algorithm on otherwise, and Nagle + delayed ACKs cap a
  client or server near 11-25 instances/s. One extra run shows that effect on the client.
* Every measured run gets a fresh server and a fresh data folder, and ``sync`` runs before it,
  so writes still being flushed from the previous run do not count against the next.
* DICOM TLS: each 1-association run of pacs-sqlite and storescp is followed at once by the
  same run over TLS (``storescu +tls``, a client certificate, the server's TLS port), and the
  report gives TLS / plain from those pairs: the cost of encryption, not of the machine's mood.
* ``pacs-stock`` is pacs on SQLite with ``PACS_DIMSE_TRANSPORT=stock`` (pynetdicom as
  published; pacs-sqlite and pacs-postgres get ``fast``): pacs-sqlite / pacs-stock is what
  the fast path buys.
* ``pacs-s3`` and ``pacs-postgres-s3`` are pacs-sqlite and pacs-postgres with
  ``--blob-store s3://BUCKET/bench/``: the objects go to a moto S3 server on 127.0.0.1 that the
  bench starts for the run (a fresh bucket, as the others get a fresh data folder) and stops
  by its PID. Each S3 run is made right next to the same run of its file-system twin, the
  pair's order flipped every repetition, and the report gives S3 / files per pair. moto is a
  Python server (one process, the GIL): its CPU is read like the server's, beside pacs's and
  storescu's, to show which of them bounds the rate. Skipped with a line saying so when moto
  is not installed, or with ``--no-s3``.
* The server's CPU time (user + system of the server process and its children, from
  /proc/PID/stat) is read before and after each run: CPU ms per instance for every server,
  pacs's DIMSE worker processes and storescp's forked children included. storescu's CPU is
  the bench's reaped children's (getrusage) over the send, the whole machine's busy CPU is
  read from /proc/stat around it (other work on the cores shows there).
* No timing is asserted: the figures are printed next to the issue's targets and saved to
  ``bench/results/``. The exit code is 1 only when a run failed outright (a store was refused,
  an instance count was wrong, a server did not start).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.util
import math
import os
import platform
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from bench.orthanc import (
    LOOPBACK,
    Orthanc,
    cpu_seconds,
    ensure_orthanc,
    free_port,
    http_ok,
    peak_rss_bytes,
    processes_named,
    start_process,
    stop_process,
    wait_until,
)

if TYPE_CHECKING:
    from tests.support.moto import MotoS3

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / "bench" / ".cache"
RESULTS_DIR = REPO / "bench" / "results"
CORPUS_VERSION = "v1"  # bump when the corpus layout below changes: old caches are ignored
CALLING_AET = "BENCHSCU"
STORESCU_PROFILE = "Bench"
TARGETS = ("storescp", "orthanc", "pacs-sqlite", "pacs-postgres", "pacs-stock", "pacs-s3",
           "pacs-postgres-s3")
TRANSPORT = {"pacs-sqlite": "fast", "pacs-postgres": "fast", "pacs-stock": "stock",
             "pacs-s3": "fast", "pacs-postgres-s3": "fast"}
# pacs with its blobs in S3 (moto's server on 127.0.0.1) -> the same pacs with blobs in files;
# each S3 run is made right next to its twin's run of the same shape
S3_TWINS = {"pacs-s3": "pacs-sqlite", "pacs-postgres-s3": "pacs-postgres"}
S3_PREFIX = "bench/"
POSTGRES_TARGETS = ("pacs-postgres", "pacs-postgres-s3")
BASELINE = "pacs-baseline"  # pacs on SQLite from another commit (--baseline REF)
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
START_TIMEOUT_S = 120.0

# per patient: (studies, series per study, instances per series) -> 100 instances a patient
LAYOUT = {"small": (2, 5, 10), "ct512": (1, 2, 50)}
SEEDS = {"small": 1, "ct512": 2}

# the targets (issue 14) ...
GOAL_SMALL_VS_ORTHANC = 1.0  # small, 1 and 4 associations
GOAL_CT_VS_ORTHANC = 1.25  # CT 512, 1 association
GOAL_TLS_VS_PLAIN = 0.8
GOAL_TARGETS = ("pacs-sqlite", "pacs-postgres")  # pacs-stock and the baseline are references
# ... and earlier issues', kept as regression checks
GOAL_PARALLEL_GAIN = 1.5
GOAL_RSS_MB = 300.0


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """The first `count` files of a cached corpus, as paths relative to `root`."""

    size: str
    root: Path
    files: tuple[str, ...]
    nbytes: int
    contexts: frozenset[tuple[str, str]]  # (SOP Class UID, Transfer Syntax UID)

    def head(self, count: int) -> Corpus:
        """The first `count` files (the corpus is generated in patient order)."""
        files = self.files[:count]
        nbytes = sum((self.root / f).stat().st_size for f in files)
        return Corpus(self.size, self.root, files, nbytes, self.contexts)


def ensure_corpus(size: str, count: int, cache: Path = CACHE_DIR) -> Corpus:
    """A corpus of at least `count` instances, generated once and cached.

    A cached corpus with more patients serves smaller requests too: generation draws its random
    numbers in patient order, so its first k patients equal a k-patient corpus.
    """
    studies, series, instances = LAYOUT[size]
    per_patient = studies * series * instances
    patients = max(1, math.ceil(count / per_patient))
    root = _cached_corpus(cache, size, patients)
    if root is None:
        root = cache / f"{size}-p{patients}-{CORPUS_VERSION}"
        log(f"corpus: generating {patients * per_patient} {size} instances in {root}")
        _generate(root, size, patients)
    files, contexts = _read_manifest(root, count)
    nbytes = sum((root / f).stat().st_size for f in files)
    return Corpus(size, root, tuple(files), nbytes, frozenset(contexts))


def _cached_corpus(cache: Path, size: str, patients: int) -> Path | None:
    best: tuple[int, Path] | None = None
    for path in cache.glob(f"{size}-p*-{CORPUS_VERSION}"):
        try:
            have = int(path.name.split("-p", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if have >= patients and (path / ".complete").exists() and (best is None or have < best[0]):
            best = (have, path)
    return best[1] if best else None


def _generate(root: Path, size: str, patients: int) -> None:
    from tests.factories.corpus import generate

    if root.exists():
        shutil.rmtree(root)  # an interrupted earlier generation
    studies, series, instances = LAYOUT[size]
    generate(
        str(root), patients, studies, series, instances, size=size, seed=SEEDS[size], quiet=True
    )
    (root / ".complete").write_text("ok\n")


def _read_manifest(root: Path, count: int) -> tuple[list[str], set[tuple[str, str]]]:
    """First `count` paths, and the (SOP class, TS) pairs storescu must propose for them."""
    import pydicom

    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:count]
    contexts: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row["Modality"], row["TransferSyntaxUID"])
        if key not in seen:  # one header read per kind of file is enough
            seen.add(key)
            ds = pydicom.dcmread(root / row["path"], stop_before_pixels=True)
            contexts.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    return [row["path"] for row in rows], contexts


def warm_page_cache(corpus: Corpus) -> None:
    """Read every file once so the first target measured does not pay for cold reads."""
    for name in corpus.files:
        (corpus.root / name).read_bytes()


def write_storescu_profile(contexts: frozenset[tuple[str, str]], path: Path) -> Path:
    """A storescu ``-xf`` config proposing each (SOP class, TS) pair of the corpus, nothing else.

    Without it storescu proposes every uncompressed transfer syntax for every storage class it
    knows; with it the association negotiates exactly what the files are.
    """
    syntaxes = sorted({ts for _, ts in contexts})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes, start=1):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}", ""]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for i, (sop_class, ts) in enumerate(sorted(contexts), start=1):
        lines.append(f"PresentationContext{i} = {sop_class}\\TS{syntaxes.index(ts) + 1}")
    lines += ["", "[[Profiles]]", f"[{STORESCU_PROFILE}]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Shape:
    """What is sent: a corpus size, the number of parallel associations, Nagle on the client."""

    key: str
    size: str
    associations: int
    nodelay: bool = True
    title: str = ""
    tls: bool = False  # DICOM TLS: storescu +tls to the server's TLS port

    @property
    def label(self) -> str:
        if self.title:
            return self.title
        text = f"{self.size} {self.associations} assoc"
        if self.tls:
            text += ", TLS"
        return text if self.nodelay else f"{text}, client Nagle on"


SHAPES = (
    Shape("small-1", "small", 1),
    Shape("small-4", "small", 4),
    Shape("ct512-1", "ct512", 1),
    Shape("ct512-4", "ct512", 4),
)
NAGLE_SHAPE = Shape("small-1-nagle", "small", 1, nodelay=False)
RSS_SHAPE = Shape("rss", "small", 4, title="RSS run, small 4 assoc")
TLS_SHAPES = {  # the plain shape -> its TLS twin, run right after it
    "small-1": Shape("small-1-tls", "small", 1, tls=True),
    "ct512-1": Shape("ct512-1-tls", "ct512", 1, tls=True),
}
TLS_TARGETS = ("storescp", "pacs-sqlite")


@dataclass(frozen=True)
class TlsFiles:
    """A CA, the server's certificate and a client certificate (for 127.0.0.1), PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, folder: Path) -> TlsFiles:
        from tests.support.pki import client_cert, make_ca, server_cert

        folder.mkdir(parents=True, exist_ok=True)
        ca = make_ca("pacs bench CA")
        cert, key = server_cert(ca).write(folder, "server")
        client, client_key = client_cert(ca, "bench client", ips=(LOOPBACK,)).write(
            folder, "client")
        return cls(ca.write_cert(folder / "ca.pem"), cert, key, client, client_key)

    def storescu_args(self) -> list[str]:
        """DCMTK's client options: this certificate, the CA, the non-downgrading BCP 195
        profile (TLS 1.2+)."""
        return ["+tls", str(self.client_key), str(self.client_cert), "+cf", str(self.ca),
                "--profile-bcp195-nd"]


@dataclass(frozen=True)
class SendResult:
    seconds: float
    error: str | None
    client_cpu_s: float  # user + system CPU of the storescu processes
    machine_cpu_s: float  # busy CPU of the whole machine over the send


def split(files: Sequence[str], parts: int) -> list[list[str]]:
    """Contiguous, nearly equal slices: each association sends whole series, like a modality."""
    parts = max(1, min(parts, len(files)))
    size, extra = divmod(len(files), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(files[start:end]))
        start = end
    return out


def send(
    corpus: Corpus, profile: Path, port: int, called_aet: str, shape: Shape, work: Path,
    tls: TlsFiles | None = None,
) -> SendResult:
    """Run `shape.associations` storescu processes at once; wall time from first start to last exit.

    Success means every storescu exited 0 with no error line: storescu stops at the first
    refused store (its default ``--halt``), so that implies every file was stored.
    """
    env = {**os.environ, "TCP_NODELAY": "1" if shape.nodelay else "0"}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    chunks = split(corpus.files, shape.associations)
    reaped_before, machine_before = _children_cpu_seconds(), machine_cpu_seconds()
    start = time.perf_counter()
    try:
        for i, chunk in enumerate(chunks):
            err_path = work / f"storescu-{i}.err"
            argv = [
                "storescu",
                "-aet",
                CALLING_AET,
                "-aec",
                called_aet,
                "-xf",
                str(profile),
                STORESCU_PROFILE,
                *(tls.storescu_args() if tls is not None else []),
                LOOPBACK,
                str(port),
                *chunk,
            ]
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    argv,
                    cwd=corpus.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            procs.append((proc, err_path))
        for proc, _ in procs:
            proc.wait()
        seconds = time.perf_counter() - start
        machine_s = machine_cpu_seconds() - machine_before
    finally:
        for proc, _ in procs:  # only left running if we were interrupted
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return SendResult(seconds, _storescu_errors(procs), _children_cpu_seconds() - reaped_before,
                      machine_s)


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (user, nice, system,
    irq, softirq of /proc/stat's ``cpu`` line; idle and I/O wait are not busy): read around a
    run, it tells whether other work shared the cores."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """User + system CPU of this process's reaped children: read around a send, where the
    only children reaped are the storescu processes (the servers are reaped when stopped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _storescu_errors(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> str | None:
    problems = []
    for i, (proc, err_path) in enumerate(procs):
        lines = err_path.read_text(errors="replace").splitlines()
        bad = [line for line in lines if line.startswith(("E:", "F:"))]
        if proc.returncode != 0 or bad:
            detail = "; ".join(bad[:3]) or "no message"
            problems.append(f"storescu #{i} exit {proc.returncode}: {detail}")
    return " | ".join(problems) or None


# -------------------------------------------------------------------------------- servers


def server_env() -> dict[str, str]:
    """Our environment with TCP_NODELAY=1 (read by DCMTK inside storescp and Orthanc) and
    without PACS_* variables, so a developer's settings cannot change what pacs measures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env["TCP_NODELAY"] = "1"
    return env


class Server:
    """A C-STORE target run for one measurement; subclasses fill in start and count."""

    name = "server"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.aet = "ANY-SCP"
        self.port = 0  # where storescu sends: the TLS port when ``tls`` is set
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls: TlsFiles | None = None  # DICOM TLS (storescp and pacs)

    def start(self) -> None:
        raise NotImplementedError

    def stored_count(self) -> int | None:
        """Instances the server holds, by its own account; None when it cannot tell."""
        return None

    def peak_rss_mb(self) -> float | None:
        """Peak RSS in MB (10^6 bytes, like the issue's target), read before stopping."""
        if self.proc is None:
            return None
        peak = peak_rss_bytes(self.proc.pid)
        return None if peak is None else peak / 1e6

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server and its children used so far (read before and after)."""
        return None if self.proc is None else cpu_seconds(self.proc.pid)

    def store_cpu_seconds(self) -> float | None:
        """CPU seconds used so far by a storage service the server writes to, beside it (the
        object store); None when there is none."""
        return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self) -> str:
        logs = sorted(self.work.glob("*.log"))
        if not logs:
            return ""
        return "\n".join(logs[0].read_text(errors="replace").splitlines()[-15:])


class Storescp(Server):
    """DCMTK storescp writing files: the ceiling (receive + write a file, nothing else).

    ``--fork`` gives each association its own process, otherwise storescp would serve the
    4 associations one after the other. It listens on all interfaces (no bind option in 3.6.7).
    """

    name = "storescp"

    def peak_rss_mb(self) -> float | None:
        """Not reported: the work happens in forked children that are gone by now."""
        return None

    def start(self) -> None:
        self.aet, self.port = "STORESCP", free_port()
        out = self.work / "received"
        out.mkdir(parents=True)
        argv = ["storescp", "--fork", "-aet", self.aet, "-od", str(out)]
        if self.tls is not None:
            argv += ["+tls", str(self.tls.server_key), str(self.tls.server_cert),
                     "+cf", str(self.tls.ca), "--profile-bcp195-nd"]
        argv.append(str(self.port))
        self.proc = start_process(argv, self.work / "storescp.log", env=server_env())
        wait_until(lambda: port_listening(self.port), self.proc, START_TIMEOUT_S, "storescp")

    def stored_count(self) -> int:
        return sum(1 for p in (self.work / "received").rglob("*") if p.is_file())


class OrthancTarget(Server):
    """Orthanc with the isolated configuration from bench/orthanc.py."""

    name = "orthanc"

    def __init__(self, work: Path, binary: str) -> None:
        super().__init__(work)
        self.orthanc = Orthanc(binary, work, calling_aet=CALLING_AET, env=server_env())

    def start(self) -> None:
        self.aet, self.port = self.orthanc.aet, self.orthanc.dicom_port
        self.orthanc.start()
        self.proc = self.orthanc.proc

    def stored_count(self) -> int:
        return self.orthanc.instance_count()

    def stop(self) -> None:
        self.orthanc.stop()
        self.proc = None


class Pacs(Server):
    """``pacs serve`` on SQLite (default) or on a fresh PostgreSQL database, with the DIMSE
    transport of its target name in ``PACS_DIMSE_TRANSPORT`` (none for the baseline)."""

    def __init__(self, work: Path, command: list[str], name: str,
                 database_url: str | None = None, tree: Path | None = None) -> None:
        super().__init__(work)
        self.command = command
        self.database_url = database_url
        self.name = name
        self.data_dir = work / "data"
        self.tree = tree  # another checkout to run (``--baseline``), else this one
        self.blob_store: str | None = None  # ``--blob-store`` (files under data_dir/objects)
        self.extra_env: dict[str, str] = {}

    def start(self) -> None:
        self.aet, self.port = "PACS", free_port()
        http_port = free_port()
        argv = [
            *self.command,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--ae-title",
            self.aet,
            "--dimse-port",
            str(self.port),
            "--http-port",
            str(http_port),
            "--http-host",
            LOOPBACK,
        ]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        if self.blob_store:
            argv += ["--blob-store", self.blob_store]
        context = None
        if self.tls is not None:  # DICOM TLS on its own port (HTTP speaks HTTPS then)
            self.port = free_port()
            argv += ["--dimse-tls-port", str(self.port), "--tls-cert", str(self.tls.server_cert),
                     "--tls-key", str(self.tls.server_key), "--tls-ca", str(self.tls.ca)]
            context = ssl.create_default_context(cafile=str(self.tls.ca))
        env = {**server_env(), **self.extra_env}
        if self.name in TRANSPORT:
            env["PACS_DIMSE_TRANSPORT"] = TRANSPORT[self.name]
        if self.tree is not None:  # ``python -m pacs.cli`` from that tree's folder
            env["PYTHONPATH"] = str(self.tree)
        self.proc = start_process(argv, self.work / "pacs.log", env=env, cwd=self.tree or REPO)
        health = f"{'https' if context else 'http'}://{LOOPBACK}:{http_port}/health"
        wait_until(lambda: http_ok(health, context), self.proc, START_TIMEOUT_S, "pacs serve")

    def stored_count(self) -> int | None:
        """Files in the blob store (``objects/``), when the store has that layout."""
        objects = self.data_dir / "objects"
        if not objects.is_dir():
            return None
        return sum(1 for p in objects.rglob("*") if p.is_file())

    def log_tail(self) -> str:
        log_path = self.work / "pacs.log"
        if not log_path.exists():
            return ""
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])


class PacsS3(Pacs):
    """pacs with ``--blob-store s3://BUCKET/bench/`` on a moto S3 server of its own on
    127.0.0.1, started before pacs and stopped after it by its PID, with one new bucket: a
    fresh, empty store, as every other run gets a fresh data folder. Staging stays local
    (``DATA_DIR/tmp``), the index is SQLite or PostgreSQL as for the twin."""

    def __init__(self, work: Path, command: list[str], name: str,
                 database_url: str | None = None) -> None:
        super().__init__(work, command, name, database_url)
        self.moto: MotoS3 | None = None
        self.bucket = ""

    def start(self) -> None:
        from tests.support.moto import MotoS3

        self.moto = MotoS3(log_path=self.work / "moto.log").start()
        self.bucket = self.moto.bucket()
        self.blob_store = f"s3://{self.bucket}/{S3_PREFIX}"
        self.extra_env = self.moto.env()
        super().start()

    def store_cpu_seconds(self) -> float | None:
        """moto's CPU seconds (one process: its server threads)."""
        if self.moto is None or self.moto.process is None:
            return None
        return cpu_seconds(self.moto.process.pid)

    def stored_count(self) -> int | None:
        """Objects under the prefix, listed from the bucket (after the CPU was read)."""
        if self.moto is None:
            return None
        pages = self.moto.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=S3_PREFIX)
        return sum(int(page.get("KeyCount", 0)) for page in pages)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.moto is not None:
                self.moto.stop()

    def log_tail(self) -> str:
        tail = super().log_tail()
        if (self.work / "moto.log").exists():
            moto_log = (self.work / "moto.log").read_text(errors="replace").splitlines()[-5:]
            tail += "\n-- moto.log --\n" + "\n".join(moto_log)
        return tail


def s3_problem() -> str | None:
    """Why the S3 targets cannot run here (moto's server, and boto3 for pacs), or None."""
    missing = [name for name in ("moto", "flask", "boto3", "httpx")
               if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (moto[server] and boto3: "
                "pip install -e '.[test,s3]')")
    return None


def port_listening(port: int) -> bool:
    """Whether a socket listens on `port`, read from /proc: no connection that the server
    would have to serve (storescp --fork would fork a child for a probe)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":
                return True
    return False


def pacs_command() -> list[str]:
    """The ``pacs`` console script next to this Python, else ``python -m pacs.cli``."""
    for candidate in (Path(sys.executable).parent / "pacs", REPO / ".venv" / "bin" / "pacs"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, "-m", "pacs.cli"]


def pacs_problem(command: list[str]) -> str | None:
    """Why `pacs serve` cannot run here, or None."""
    try:
        result = subprocess.run(
            [*command, "serve", "--help"], cwd=REPO, capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(command)} serve --help failed: {exc}"
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"`pacs serve --help` exited {result.returncode}: {' '.join(tail)}"
    return None


# ------------------------------------------------------------------------------ postgres


def _admin_conninfo(base_url: str, database: str = "postgres") -> str:
    """libpq URL for `database` from a SQLAlchemy URL such as postgresql+psycopg://u@h:p."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = parts.scheme.split("+", 1)[0]
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def postgres_problem(base_url: str) -> str | None:
    """Why PostgreSQL at `base_url` cannot be used, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(_admin_conninfo(base_url), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"cannot connect to {base_url}: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def fresh_database(base_url: str, name: str) -> Iterator[str]:
    """CREATE DATABASE `name`, yield its SQLAlchemy URL, DROP it afterwards."""
    import psycopg

    admin = _admin_conninfo(base_url)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base_url.rstrip('/')}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One measurement: a target, a shape, a corpus."""

    target: str
    shape: Shape
    instances: int
    nbytes: int
    seconds: float = 0.0
    cpu_s: float | None = None  # the server's CPU time during the send
    store_cpu_s: float | None = None  # the object store's (moto's), for the S3 targets
    client_cpu_s: float | None = None  # the storescu processes'
    machine_cpu_s: float | None = None  # every process's on the machine, ours included
    rss_mb: float | None = None
    stored: int | None = None
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms(self) -> float | None:
        """Server CPU milliseconds per instance."""
        return self.per_instance_ms(self.cpu_s)

    def per_instance_ms(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.instances else cpu_s * 1000 / self.instances

    def cores(self, cpu_s: float | None) -> float | None:
        """CPU seconds per second of the run: how many cores that process kept busy."""
        return None if cpu_s is None or self.seconds <= 0 else cpu_s / self.seconds


@dataclass
class Bench:
    """Everything a run needs that does not change between runs."""

    root: Path
    profiles: dict[str, Path]
    orthanc_binary: str | None
    pacs_cmd: list[str]
    postgres_url: str
    keep: bool = False
    baseline_tree: Path | None = None
    tls: TlsFiles | None = None
    counter: int = 0
    runs: list[Run] = field(default_factory=list)

    def workdir(self, target: str, shape: Shape) -> Path:
        self.counter += 1
        path = self.root / f"{self.counter:03d}-{target}-{shape.key}"
        path.mkdir(parents=True)
        return path

    def server(self, target: str, work: Path, database_url: str | None, tls: bool = False
               ) -> Server:
        server = self._server(target, work, database_url)
        if tls:
            if self.tls is None:
                self.tls = TlsFiles.make(self.root / "tls")
            server.tls = self.tls
        return server

    def _server(self, target: str, work: Path, database_url: str | None) -> Server:
        if target == "storescp":
            return Storescp(work)
        if target == "orthanc":
            assert self.orthanc_binary is not None
            return OrthancTarget(work, self.orthanc_binary)
        if target == BASELINE:
            return Pacs(work, [sys.executable, "-m", "pacs.cli"], BASELINE,
                        tree=self.baseline_tree)
        if target in S3_TWINS:
            return PacsS3(work, self.pacs_cmd, target, database_url)
        return Pacs(work, self.pacs_cmd, target, database_url)


def run_once(bench: Bench, target: str, shape: Shape, corpus: Corpus) -> Run:
    """Fresh server and data folder, send, verify, read peak RSS, stop; never raises."""
    run = Run(target, shape, len(corpus.files), corpus.nbytes)
    work = bench.workdir(target, shape)
    try:
        with _database_for(bench, target, work.name) as database_url:
            server = bench.server(target, work, database_url, tls=shape.tls)
            try:
                server.start()
                os.sync()
                cpu_before, store_before = server.cpu_seconds(), server.store_cpu_seconds()
                result = send(
                    corpus, bench.profiles[shape.size], server.port, server.aet, shape, work,
                    tls=server.tls,
                )
                cpu_after, store_after = server.cpu_seconds(), server.store_cpu_seconds()
                run.seconds, run.error = result.seconds, result.error
                run.client_cpu_s, run.machine_cpu_s = result.client_cpu_s, result.machine_cpu_s
                if cpu_before is not None and cpu_after is not None:
                    run.cpu_s = cpu_after - cpu_before
                if store_before is not None and store_after is not None:
                    run.store_cpu_s = store_after - store_before
                run.rss_mb = server.peak_rss_mb()
                run.stored = server.stored_count()
                if run.error is None and run.stored is not None and run.stored != run.instances:
                    run.error = f"server holds {run.stored} instances, {run.instances} were sent"
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                tail = server.log_tail()
                if tail:
                    log(f"  last lines of the {target} log:\n{_indent(tail)}")
            finally:
                server.stop()
    except Exception as exc:  # the database could not be created or dropped
        run.error = run.error or f"{type(exc).__name__}: {exc}"
    # The run's folder stays until the whole benchmark ends (or --keep): deleting thousands of
    # files here would charge the next target for it. On ext4 without a journal (as on the
    # machines this was built on) every new inode is then searched for past the recently freed
    # ones for a minute or more: 5-10% of a receiver's CPU in the runs that follow.
    _report_run(run)
    bench.runs.append(run)
    return run


@contextmanager
def _database_for(bench: Bench, target: str, tag: str) -> Iterator[str | None]:
    if target not in POSTGRES_TARGETS:
        yield None
        return
    name = f"pacs_bench_{os.getpid()}_{tag.replace('-', '_')}"
    with fresh_database(bench.postgres_url, name) as url:
        yield url


def _report_run(run: Run) -> None:
    head = f"  {run.target:14s} {run.shape.label:32s}"
    if run.error:
        log(f"{head} FAILED: {run.error}")
        return
    rss = f", peak RSS {run.rss_mb:.0f} MB" if run.rss_mb is not None else ""
    cpu = f", server CPU {run.cpu_ms:.2f} ms/inst" if run.cpu_ms is not None else ""
    store_ms = run.per_instance_ms(run.store_cpu_s)
    if store_ms is not None:
        cpu += f", moto CPU {store_ms:.2f} ms/inst"
    log(
        f"{head} {run.instances} in {run.seconds:.2f} s = {run.rate:.0f} inst/s, "
        f"{run.mb_per_s:.1f} MB/s{cpu}{rss}"
    )


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines())


# ------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Figure:
    """Median over repeats of one (target, shape); None fields when every repeat failed."""

    rate: float | None
    mb_per_s: float | None
    rss_mb: float | None
    cpu_ms: float | None  # server CPU per instance
    error: str | None


def summarize(runs: Sequence[Run], target: str, shape_key: str) -> Figure | None:
    mine = [r for r in runs if r.target == target and r.shape.key == shape_key]
    if not mine:
        return None
    ok = [r for r in mine if r.error is None]
    if not ok:
        return Figure(None, None, None, None, mine[0].error)
    rss = [r.rss_mb for r in ok if r.rss_mb is not None]
    cpu = [r.cpu_ms for r in ok if r.cpu_ms is not None]
    return Figure(
        statistics.median(r.rate for r in ok),
        statistics.median(r.mb_per_s for r in ok),
        max(rss) if rss else None,
        statistics.median(cpu) if cpu else None,
        None,
    )


def _rate(runs: Sequence[Run], target: str, shape_key: str) -> float | None:
    fig = summarize(runs, target, shape_key)
    return fig.rate if fig else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _cell(fig: Figure | None) -> str:
    if fig is None:
        return "-"
    if fig.rate is None:
        return "FAILED"
    return f"{fig.rate:.0f}/s · {fig.mb_per_s:.1f} MB/s"


def render(
    runs: Sequence[Run],
    targets: Sequence[str],
    meta: dict[str, str],
    nagle_count: int,
    rss_count: int,
) -> str:
    """The Markdown report: throughput table, ratios, and the issue's targets."""
    out = [f"# Ingest benchmark {meta['when']}", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k != "when"]
    out += ["", "## Throughput (median instances/s · MB/s)", ""]
    out += [
        "| target | " + " | ".join(s.label for s in SHAPES) + " | peak RSS |",
        "|---" * (len(SHAPES) + 2) + "|",
    ]
    for target in targets:
        figs = [summarize(runs, target, s.key) for s in SHAPES]
        rss = [f.rss_mb for f in figs if f and f.rss_mb is not None]
        peak = f"{max(rss):.0f} MB" if rss else "-"
        out.append(f"| {target} | " + " | ".join(_cell(f) for f in figs) + f" | {peak} |")
    out += _ratio_section(runs, targets)
    out += _cpu_section(runs, targets)
    if nagle_count:
        out += _nagle_section(runs, targets, nagle_count)
    out += _tls_section(runs, targets)
    out += _s3_section(runs, targets)
    out += _goal_section(runs, targets, rss_count)
    failures = [r for r in runs if r.error]
    if failures:
        out += ["", "## Failed runs", ""]
        out += [f"- {r.target}, {r.shape.label}: {r.error}" for r in failures]
    return "\n".join(out) + "\n"


def _pacs_targets(targets: Sequence[str]) -> list[str]:
    return [t for t in targets if t.startswith("pacs-")]


# pacs on SQLite that pacs-sqlite alone is compared with, and what the ratio tells
SQLITE_REFERENCES = {
    "pacs-stock": " (what the fast transport buys)",
    BASELINE: " (this checkout / the baseline commit)",
}


def _ratio_section(runs: Sequence[Run], targets: Sequence[str]) -> list[str]:
    out = [
        "",
        "## Ratios",
        "",
        "| ratio | " + " | ".join(s.label for s in SHAPES) + " |",
        "|---" * (len(SHAPES) + 1) + "|",
    ]
    for pacs in _pacs_targets(targets):
        for ref in ("orthanc", "storescp", "pacs-stock", BASELINE):
            if ref == pacs or (ref in SQLITE_REFERENCES and pacs != "pacs-sqlite"):
                continue
            if ref in targets:
                cells = [
                    _fmt_ratio(_ratio(_rate(runs, pacs, s.key), _rate(runs, ref, s.key)))
                    for s in SHAPES
                ]
                label = f"{pacs} / {ref}" + SQLITE_REFERENCES.get(ref, "")
                out.append(f"| {label} | " + " | ".join(cells) + " |")
    for target in targets:
        gains = []
        for shape in SHAPES:
            one = _rate(runs, target, f"{shape.size}-1")
            gains.append(
                _fmt_ratio(_ratio(_rate(runs, target, shape.key), one))
                if shape.associations > 1
                else ""
            )
        out.append(f"| {target} 4 assoc / 1 assoc | " + " | ".join(gains) + " |")
    return out


def _cpu_section(runs: Sequence[Run], targets: Sequence[str]) -> list[str]:
    """The server's CPU per instance: where a rate ratio hides a cost the other cores paid."""
    out = [
        "",
        "## Server CPU per instance (median ms; user + system of the server process and its "
        "children, /proc/PID/stat)",
        "",
        "| target | " + " | ".join(s.label for s in SHAPES) + " |",
        "|---" * (len(SHAPES) + 1) + "|",
    ]
    for target in targets:
        figs = [summarize(runs, target, s.key) for s in SHAPES]
        out.append(f"| {target} | " + " | ".join(_cpu_cell(f) for f in figs) + " |")
    if "orthanc" in targets:
        for pacs in _pacs_targets(targets):
            cells = [_fmt_ratio(_ratio(_cpu(runs, pacs, s.key), _cpu(runs, "orthanc", s.key)))
                     for s in SHAPES]
            out.append(f"| {pacs} / orthanc (CPU ratio) | " + " | ".join(cells) + " |")
    s3 = [t for t in targets if t in S3_TWINS]
    if s3:
        out += ["", f"{', '.join(s3)}: pacs's processes only; the object store's CPU is in the "
                "S3 section."]
    return out


def _cpu(runs: Sequence[Run], target: str, shape_key: str) -> float | None:
    fig = summarize(runs, target, shape_key)
    return fig.cpu_ms if fig else None


def _cpu_cell(fig: Figure | None) -> str:
    if fig is None:
        return "-"
    return "n/a" if fig.cpu_ms is None else f"{fig.cpu_ms:.2f}"


def _nagle_section(runs: Sequence[Run], targets: Sequence[str], count: int) -> list[str]:
    out = [
        "",
        f"## Client Nagle on (storescu TCP_NODELAY=0, {count} small instances, 1 association)",
        "",
        "| target | Nagle on | TCP_NODELAY=1 (small 1 assoc) |",
        "|---|---|---|",
    ]
    for target in targets:
        fig = summarize(runs, target, NAGLE_SHAPE.key)
        if fig is not None:
            out.append(f"| {target} | {_cell(fig)} | {_cell(summarize(runs, target, 'small-1'))} |")
    return out


def _tls_section(runs: Sequence[Run], targets: Sequence[str]) -> list[str]:
    """TLS / plain of the same shape, from runs made back to back in this bench."""
    measured = [t for t in TLS_TARGETS if t in targets
                and any(summarize(runs, t, s.key) for s in TLS_SHAPES.values())]
    if not measured:
        return []
    out = ["", "## DICOM TLS (storescu +tls, 1 association; each TLS run right after its plain "
           "run)", "", "| target | " + " | ".join(
               f"{s.label} | {s.label}, TLS | TLS / plain" for s in SHAPES if s.key in TLS_SHAPES)
           + " |", "|---" * (1 + 3 * len(TLS_SHAPES)) + "|"]
    for target in measured:
        cells = []
        for plain, tls in TLS_SHAPES.items():
            cells += [_cell(summarize(runs, target, plain)),
                      _cell(summarize(runs, target, tls.key)),
                      _fmt_ratio(_tls_ratio(runs, target, plain))]
        out.append(f"| {target} | " + " | ".join(cells) + " |")
    return out


def _tls_ratio(runs: Sequence[Run], target: str, plain: str) -> float | None:
    return _ratio(_rate(runs, target, TLS_SHAPES[plain].key), _rate(runs, target, plain))


def pair_ratios(runs: Sequence[Run], target: str, reference: str, shape_key: str
                ) -> list[float]:
    """Rate ratios target / reference of the runs made as pairs (the k-th run of each for
    `shape_key`), the pairs where either failed left out."""
    mine = [r for r in runs if r.target == target and r.shape.key == shape_key]
    theirs = [r for r in runs if r.target == reference and r.shape.key == shape_key]
    return [a.rate / b.rate for a, b in zip(mine, theirs, strict=False)
            if a.error is None and b.error is None and a.rate > 0 and b.rate > 0]


def _spread(values: Sequence[float]) -> str:
    """Median (min-max); the value alone when there is one."""
    if not values:
        return "n/a"
    median = f"{statistics.median(values):.2f}"
    return median if len(values) == 1 else f"{median} ({min(values):.2f}-{max(values):.2f})"


def _s3_section(runs: Sequence[Run], targets: Sequence[str]) -> list[str]:
    """The S3 targets beside their file-system twins: rates, S3 / files per pair, and the CPU
    of pacs, moto and storescu that tells which bounds the rate."""
    measured = [t for t in S3_TWINS if t in targets]
    if not measured:
        return []
    labels = " | ".join(s.label for s in SHAPES)
    out = ["", "## Blobs in S3 (moto's S3 server on 127.0.0.1) beside blobs in files", "",
           "Each S3 run is made next to the same run of its twin with files, the pair's order "
           "flipped every repetition; S3 / files: the median of the pairs' ratios (min-max).",
           "", f"| target | {labels} |", "|---" * (len(SHAPES) + 1) + "|"]
    for s3 in measured:
        twin = S3_TWINS[s3]
        rows = [s3, twin] if twin in targets else [s3]
        for target in rows:
            out.append(f"| {target} | " + " | ".join(
                _cell(summarize(runs, target, s.key)) for s in SHAPES) + " |")
        if twin in targets:
            out.append(f"| {s3} / {twin} | " + " | ".join(
                _spread(pair_ratios(runs, s3, twin, s.key)) for s in SHAPES) + " |")
    out += ["", f"CPU per instance (median ms) and cores kept busy (CPU s per s of the run), "
            f"on {os.cpu_count()} cores shared by all three: moto serves S3 from one Python "
            "process, so about 1.0 core is its ceiling (the GIL). Machine cores: every "
            "process's busy time (/proc/stat), other work on the machine included.", "",
            "| target | shape | inst/s | pacs ms | moto ms | storescu ms | pacs cores | "
            "moto cores | storescu cores | the three | machine cores |", "|---" * 11 + "|"]
    for s3 in measured:
        for target in (s3, S3_TWINS[s3]):
            if target not in targets:
                continue
            for shape in SHAPES:
                ok = [r for r in runs
                      if r.target == target and r.shape.key == shape.key and r.error is None]
                if ok:
                    out.append(_cpu_row(target, shape, ok))
    return out


def _cpu_row(target: str, shape: Shape, ok: Sequence[Run]) -> str:
    def median(values: list[float | None], digits: int = 2) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.median(known):.{digits}f}" if known else "-"

    totals = [None if r.cpu_s is None or r.client_cpu_s is None
              else r.cores((r.cpu_s or 0) + (r.store_cpu_s or 0) + r.client_cpu_s) for r in ok]
    cells = [
        f"{statistics.median(r.rate for r in ok):.0f}/s",
        median([r.cpu_ms for r in ok]),
        median([r.per_instance_ms(r.store_cpu_s) for r in ok]),
        median([r.per_instance_ms(r.client_cpu_s) for r in ok]),
        median([r.cores(r.cpu_s) for r in ok]),
        median([r.cores(r.store_cpu_s) for r in ok]),
        median([r.cores(r.client_cpu_s) for r in ok]),
        median(totals),
        median([r.cores(r.machine_cpu_s) for r in ok]),
    ]
    return f"| {target} | {shape.label} | " + " | ".join(cells) + " |"


def _verdict(value: float | None, goal: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value >= goal if higher_is_better else value < goal
    return "met" if ok else "MISSED"


def _goal_section(runs: Sequence[Run], targets: Sequence[str], rss_count: int) -> list[str]:
    out = [
        "",
        "## The issue's targets",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---|---|",
    ]
    vs_orthanc = (
        ("small-1", GOAL_SMALL_VS_ORTHANC),
        ("small-4", GOAL_SMALL_VS_ORTHANC),
        ("ct512-1", GOAL_CT_VS_ORTHANC),
    )
    for pacs in (t for t in GOAL_TARGETS if t in targets):
        for key, goal in vs_orthanc:
            value = _ratio(_rate(runs, pacs, key), _rate(runs, "orthanc", key))
            label = next(s.label for s in SHAPES if s.key == key)
            out.append(
                f"| {pacs}: {label} pacs/Orthanc | ≥ {goal:.2f}x | {_fmt_ratio(value)} | "
                f"{_verdict(value, goal)} |"
            )
    for plain, tls in TLS_SHAPES.items():
        if summarize(runs, "pacs-sqlite", tls.key) is not None:
            ratio = _tls_ratio(runs, "pacs-sqlite", plain)
            out.append(
                f"| pacs-sqlite: C-STORE over DICOM TLS / plain, {tls.size} 1 assoc | "
                f"≥ {GOAL_TLS_VS_PLAIN} | {_fmt_ratio(ratio)} | "
                f"{_verdict(ratio, GOAL_TLS_VS_PLAIN)} |"
            )
    return out + _earlier_goal_section(runs, targets, rss_count)


def _earlier_goal_section(
    runs: Sequence[Run], targets: Sequence[str], rss_count: int
) -> list[str]:
    """Targets met by earlier issues, kept in view so that a change does not lose them."""
    out = [
        "",
        "## Earlier issues' targets (regression checks)",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---|---|",
    ]
    for pacs in (t for t in GOAL_TARGETS if t in targets):
        for size in ("small", "ct512"):
            gain = _ratio(_rate(runs, pacs, f"{size}-4"), _rate(runs, pacs, f"{size}-1"))
            out.append(
                f"| {pacs}: {size} 4 assoc / 1 assoc | ≥ {GOAL_PARALLEL_GAIN} | "
                f"{_fmt_ratio(gain)} | {_verdict(gain, GOAL_PARALLEL_GAIN)} |"
            )
    rss_fig = summarize(runs, "pacs-sqlite", RSS_SHAPE.key)
    if rss_fig is not None:
        value = rss_fig.rss_mb
        measured = f"{value:.0f} MB" if value is not None else "FAILED"
        out.append(
            f"| pacs-sqlite: peak RSS after {rss_count} small instances "
            f"(4 assoc) | < {GOAL_RSS_MB:.0f} MB | {measured} | "
            f"{_verdict(value, GOAL_RSS_MB, higher_is_better=False)} |"
        )
    else:
        out.append(
            f"| pacs-sqlite: peak RSS after 10,000 instances | < {GOAL_RSS_MB:.0f} MB | "
            "not measured (--rss-run 10000) | n/a |"
        )
    return out


# --------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--small", type=int, default=2000, help="small instances (default 2000)")
    ap.add_argument("--ct", type=int, default=300, help="CT 512x512 instances (default 300)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; medians are shown")
    ap.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma list from {','.join(TARGETS)}"
    )
    ap.add_argument(
        "--nagle-run",
        type=int,
        default=100,
        metavar="N",
        help="instances for the extra 'client Nagle on' run to storescp and "
        "pacs-sqlite (~11/s, keep it small; 0 skips it)",
    )
    ap.add_argument(
        "--rss-run",
        type=int,
        default=0,
        metavar="N",
        help="send N small instances to pacs-sqlite and report its peak RSS "
        "(0 = skip; the issue's target is for 10000)",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where servers keep their data during a run (default: system temp)",
    )
    ap.add_argument("--keep", action="store_true", help="keep server data folders and logs")
    ap.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"follow each 1-association run of {' and '.join(TLS_TARGETS)} with the same run "
        "over DICOM TLS, and report TLS / plain (default: on)",
    )
    ap.add_argument(
        "--s3",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run pacs with its blobs in S3 too, on a moto S3 server on 127.0.0.1: "
        + ", ".join(f"{s3} next to {twin}" for s3, twin in S3_TWINS.items())
        + ", and report S3 / files (default: on; skipped when moto is not installed)",
    )
    ap.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also run pacs on SQLite from git commit REF (a temporary worktree), each of its "
        "runs right after the same run of this checkout's pacs-sqlite (or of pacs-s3 when that "
        "follows it), and print the ratio: "
        "does a change cost ingest speed? (needs pacs-sqlite among the targets)",
    )
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if not args.s3:
        args.targets = [t for t in args.targets if t not in S3_TWINS]
    if args.baseline and "pacs-sqlite" not in args.targets:
        ap.error("--baseline compares with pacs-sqlite: add it to --targets")
    return args


def usable_targets(
    wanted: Sequence[str], postgres_url: str
) -> tuple[list[str], str | None, list[str]]:
    """Drop targets that cannot run here, saying why; returns (targets, orthanc, pacs cmd)."""
    targets = list(wanted)
    orthanc_binary = None
    if "orthanc" in targets:
        orthanc_binary = ensure_orthanc(log)
        if orthanc_binary is None:
            log("orthanc: not installed and could not be installed: skipped")
            targets.remove("orthanc")
        else:
            others = processes_named("Orthanc")
            if others:
                log(
                    f"orthanc: note: Orthanc already running as pid {others} (not ours); it "
                    "keeps its own ports and is left alone"
                )
    command = pacs_command()
    if any(t.startswith("pacs-") for t in targets):
        problem = pacs_problem(command)
        if problem:
            log(f"pacs: cannot run ({problem}): pacs targets skipped")
            targets = [t for t in targets if not t.startswith("pacs-")]
    postgres = [t for t in targets if t in POSTGRES_TARGETS]
    if postgres:
        problem = postgres_problem(postgres_url)
        if problem:
            log(f"{', '.join(postgres)}: skipped: {problem}")
            targets = [t for t in targets if t not in POSTGRES_TARGETS]
    s3 = [t for t in targets if t in S3_TWINS]
    if s3:
        problem = s3_problem()
        if problem:
            log(f"{', '.join(s3)}: skipped: {problem}")
            targets = [t for t in targets if t not in S3_TWINS]
    return targets, orthanc_binary, command


def environment(
    orthanc_binary: str | None, corpora: dict[str, Corpus], args: argparse.Namespace,
    targets: Sequence[str],
) -> dict[str, str]:
    """The header of the report: what ran, on what, with which data."""
    meta = {"when": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
    meta["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    meta["DCMTK"] = _first_line(["storescu", "--version"])
    if orthanc_binary:
        meta["Orthanc"] = _first_line([orthanc_binary, "--version"])
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "-uno"])
    meta["pacs commit"] = commit + (" (with uncommitted changes)" if dirty != "unknown" else "")
    counts = {"small": args.small, "ct512": args.ct}
    for size, corpus in corpora.items():
        used = corpus.head(counts[size])
        n = len(used.files)
        if n:
            meta[f"corpus {size}"] = (
                f"{n} files, {used.nbytes / 1e6:.1f} MB ({used.nbytes / n / 1e3:.0f} kB/file)"
            )
    meta["repeats"] = f"{args.repeat} (medians shown)" if args.repeat > 1 else "1"
    if any(t in S3_TWINS for t in targets):
        meta["object store"] = (
            f"moto {_module_version('moto')} (python -m moto.server on 127.0.0.1, one per run, "
            f"a new bucket), pacs's client boto3 {_module_version('boto3')}")
    if args.baseline:
        base = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline])
        meta[BASELINE] = f"{args.baseline} ({base}), runs alternated with pacs-sqlite"
    return meta


def _module_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (result.stdout or result.stderr).decode(errors="replace").strip()
    return text.splitlines()[0].strip("$ ") if text and result.returncode == 0 else "unknown"


def plan(args: argparse.Namespace, targets: Sequence[str]) -> list[tuple[str, Shape]]:
    """Which (target, shape) runs happen, in order; each is repeated --repeat times. An S3
    target whose file-system twin runs is not in it: it runs next to the twin's runs."""
    sizes = {"small": args.small, "ct512": args.ct}
    alone = [t for t in targets if S3_TWINS.get(t) not in targets]
    runs = [(t, s) for t in alone for s in SHAPES if sizes[s.size] > 0]
    if args.nagle_run > 0:
        runs += [(t, NAGLE_SHAPE) for t in ("storescp", "pacs-sqlite") if t in targets]
    return runs


def _baseline_tree(ref: str, root: Path) -> Path:
    """A detached worktree of ``ref`` under ``root`` (removed when the bench ends)."""
    tree = root / "baseline-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
                   capture_output=True, check=True)
    return tree


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn SIGTERM into SystemExit so every ``finally`` stops its server and drops its
    database; without it a killed bench would leave servers running."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            log(f"{tool} not found: install DCMTK (apt-get install dcmtk)")
            return 2
    postgres_url = os.environ.get("PACS_BENCH_POSTGRES", DEFAULT_POSTGRES)
    targets, orthanc_binary, command = usable_targets(args.targets, postgres_url)
    if not targets:
        log("no target can run")
        return 2

    corpora = _corpora(args, targets)
    root = Path(tempfile.mkdtemp(prefix="pacs-bench-", dir=args.work_dir))
    profiles = {
        size: write_storescu_profile(c.contexts, root / f"storescu-{size}.cfg")
        for size, c in corpora.items()
    }
    bench = Bench(root, profiles, orthanc_binary, command, postgres_url, keep=args.keep)
    try:
        if args.baseline and "pacs-sqlite" in targets:
            bench.baseline_tree = _baseline_tree(args.baseline, root)
            targets.append(BASELINE)
        _measure(bench, args, targets, corpora)
    finally:
        if bench.baseline_tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(bench.baseline_tree)], capture_output=True, check=False)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept server folders and logs in {root}")

    meta = environment(orthanc_binary, corpora, args, targets)
    report = render(bench.runs, targets, meta, args.nagle_run, args.rss_run)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"ingest-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(report, encoding="utf-8")
    log("")
    log(report)
    log(f"written to {path.relative_to(REPO)}")
    return 1 if any(r.error for r in bench.runs) else 0


def _corpora(args: argparse.Namespace, targets: Sequence[str]) -> dict[str, Corpus]:
    """Generate/load the corpora once; the small one is sized for the largest small run."""
    small_needed = max(args.small, args.nagle_run, args.rss_run if "pacs-sqlite" in targets else 0)
    corpora = {}
    if small_needed > 0:
        corpora["small"] = ensure_corpus("small", small_needed)
    if args.ct > 0:
        corpora["ct512"] = ensure_corpus("ct512", args.ct)
    for corpus in corpora.values():
        warm_page_cache(corpus)
    return corpora


def _measure(
    bench: Bench, args: argparse.Namespace, targets: Sequence[str], corpora: dict[str, Corpus]
) -> None:
    counts = {"small": args.small, "ct512": args.ct, NAGLE_SHAPE.key: args.nagle_run}
    s3_twin = {twin: s3 for s3, twin in S3_TWINS.items() if s3 in targets}
    for target, shape in plan(args, [t for t in targets if t != BASELINE]):
        corpus = corpora[shape.size].head(counts.get(shape.key, counts[shape.size]))
        for repetition in range(args.repeat):
            # the S3 run next to its twin's, first in every other repetition
            s3 = s3_twin.get(target) if shape in SHAPES else None
            if s3 and repetition % 2 == 1:
                run_once(bench, s3, shape, corpus)
            run_once(bench, target, shape, corpus)
            if s3 and repetition % 2 == 0:
                run_once(bench, s3, shape, corpus)
            if target == "pacs-sqlite" and BASELINE in targets and shape in SHAPES:
                run_once(bench, BASELINE, shape, corpus)  # after pacs-sqlite (or pacs-s3)
            if args.tls and target in TLS_TARGETS and shape.key in TLS_SHAPES:
                run_once(bench, target, TLS_SHAPES[shape.key], corpus)  # its TLS twin
    if args.rss_run > 0 and "pacs-sqlite" in targets:
        log(f"peak RSS run: {args.rss_run} small instances to pacs-sqlite")
        run_once(bench, "pacs-sqlite", RSS_SHAPE, corpora["small"].head(args.rss_run))


if __name__ == "__main__":
    sys.exit(main())
