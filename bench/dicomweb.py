"""DICOMweb benchmark (issues 4 and 14): QIDO-RS, WADO-RS and STOW-RS of pacs next to Orthanc.

    python -m bench.dicomweb                                  # 100,000 instances, pacs on SQLite
    python -m bench.dicomweb --orthanc                        # plus Orthanc + its DICOMweb plugin
    python -m bench.dicomweb --targets sqlite,postgresql --orthanc
    python -m bench.dicomweb --scale 10000 --reps 20 --orthanc  # quick run (10-15 minutes)

How a run goes (bench/README.md has the long version):

* Every target (pacs on SQLite, on PostgreSQL, Orthanc with its DICOMweb plugin) is set up
  first and then left running, side by side. Its index holds bench.query's synthetic
  population (10 instances a study, CT/MR/CR, about 1,000 studies a year from 2015),
  ``--scale`` instances: for pacs through the ingest service's index path
  (``bench.query.fill_pacs``; no blobs, studies marked stable), for Orthanc as real 8x8 files
  through ``POST /instances`` (``bench.query.fill_orthanc``, then Orthanc restarted). Real
  files are stored into each running server with DCMTK ``storescu`` (``TCP_NODELAY=1``):
  three CT series of 600 instances (128x128 16-bit, about 39 kB, one study each) and
  bench.query's 300-instance CT 512x512 study. Only these are read back by WADO-RS.
* Then ``--reps`` repetitions. In each, every timed row is measured on every target, target
  after target, in an order rotated by one target each repetition (latency requests alternate
  target by target, STOW-RS POSTs too). A ratio pacs / Orthanc is computed per repetition,
  from figures taken seconds apart, and the report gives the median of those ratios with
  their min-max. Measured
  one target after the other, the same servers gave 2.16x on a quiet machine and 0.95x when
  other work shared the machine during pacs's phase; interleaved, a busy neighbour spoils the
  repetitions it overlaps, on every target alike, not the whole ratio.
* HTTP client: ``http.client`` with ONE keep-alive connection per target (TCP_NODELAY on),
  ``Accept-Encoding: identity``. Latencies run from sending the request to the last byte of
  the body: ``--requests`` per target and repetition after 3 unmeasured warm-ups; a
  repetition's figure is the median of its requests. Every QIDO answer is counted against the
  population.
* Metadata, cold: the FIRST request for each of the three series, right after they were stored
  into a freshly started server, the targets in turn (a rotated order per series).
* WADO-RS: ``GET /studies/{study}`` of the 300-instance CT study, ``transfer-syntax=*``, the
  whole body read and its parts counted; MB/s of the files' bytes. A raw read of the same
  300 files from the page cache takes its turn in the rotation like a target.
* STOW-RS, in the first ``--stow-reps`` repetitions: the 300 CT 512x512 instances, and
  ``--stow-small`` small MR/CT instances (bench.ingest's small corpus, 10-40 kB), each time
  with new Study/Series/SOP Instance UIDs (a new study per target and repetition, so the
  server really stores them), in POSTs of 50 on one connection per target, the targets'
  POSTs alternating; ``sync`` before each POST so none pays for another's writes being
  flushed. Instances/s over a target's POSTs, and the CPU time the server process spent on
  them (from /proc; less moved by neighbours than wall time, but without PostgreSQL's
  processes for pacs-postgres).
* QIDO throughput: 8 threads, each with its own keep-alive connection, cycle through the study
  and series QIDO queries for ``--throughput-seconds`` per target and repetition.
* Query auditing (pacs only): after the repetitions, a second ``pacs serve`` is started on the
  same data dir and index with query auditing off (``PACS_AUDIT_QUERIES=false``; the first has
  it on, the default). The study and series QIDO requests alternate between the two, request
  by request, ``--audit-rounds`` x ``--reps`` each; then ``--audit-rounds`` throughput windows
  per server, alternating. Every audited query is one more row in the index's audit trail,
  written in batches by a background thread.

Endpoints that pacs does not have yet (HTTP 404, 405 or 501) are shown as "n/a", not failures.
No timing is asserted; the exit code is 1 only when a run failed outright (a server did not
start, a wrong number of matches or parts, an HTTP error other than "not there yet").
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import http.client
import io
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.ingest import (
    CACHE_DIR,
    DEFAULT_POSTGRES,
    REPO,
    RESULTS_DIR,
    Corpus,
    Shape,
    ensure_corpus,
    log,
    pacs_command,
    pacs_problem,
    postgres_problem,
    send,
    server_env,
    write_storescu_profile,
)
from bench.orthanc import (
    LOOPBACK,
    ensure_orthanc,
    find_dicomweb_plugin,
    free_port,
    http_ok,
    orthanc_config,
    peak_rss_bytes,
    processes_named,
    start_process,
    wait_until,
)
from bench.query import (
    CALLING_AET,
    INSTANCES_PER_STUDY,
    MONTH,
    UID_ROOT,
    BenchOrthanc,
    PacsServer,
    StudySpec,
    _database,
    _indent,
    _percentile,
    ensure_move_corpus,
    environment,
    fill_orthanc,
    fill_pacs,
    move_study_uid,
    population,
    probes,
)

BACKENDS = {"sqlite": "sqlite", "postgres": "postgres", "postgresql": "postgres"}
RESULTS_FILE = REPO / "bench" / "RESULTS-dicomweb.md"

# the real 600-instance series: tests/factories/corpus.py, 3 patients x 1 study x 1 series
SERIES_LAYOUT = (3, 1, 1, 600)
SERIES_SEED = 50  # this seed makes all three CT (128x128), none SMI*, none in the month
SERIES_CACHE = "dicomweb-series600-v1"

STOW_BATCH = 50
# Who the STOW-RS studies belong to: one patient, a date outside the QIDO month and a name
# outside smi*, so that what the repetitions store never changes a QIDO row's answer.
STOW_PATIENT = {"PatientID": "DWSTOW", "PatientName": "Stow^Bench",
                "PatientBirthDate": "19700101", "PatientSex": "O"}
STOW_STUDY_DATE = "20240102"
THREADS = 8
NOT_THERE = (404, 405, 501)  # an endpoint that has not landed yet: "n/a", not a failure
RAW = "raw"  # the pseudo-target of the raw file read

# the issues' targets
GOAL_EXACT_MS = 10.0
GOAL_WILDCARD_MS = 30.0
GOAL_META_COLD_MS = 300.0
GOAL_META_WARM_MS = 30.0
GOAL_304_MS = 5.0
GOAL_WADO_VS_RAW = 0.5
GOAL_STOW_VS_ORTHANC = 1.25  # issue 14: for CT and for small instances, in every repetition

QIDO_JSON = {"Accept": "application/dicom+json"}
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

T = TypeVar("T")


# ------------------------------------------------------------------------------- client


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    ms: float
    nbytes: int  # body bytes read (also when the body was streamed and dropped)
    parts: int | None = None  # multipart parts, when counted


class Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port, re-opened if the server closed it."""

    def __init__(self, port: int, timeout: float = 600.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = conn
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None, stream: bool = False, count_parts: bool = False,
    ) -> Reply:
        """Send and read the whole answer; the clock runs from sending to the last byte.
        ``stream`` reads the body in 1 MB chunks and drops it (only its size is kept)."""
        for attempt in range(2):
            conn = self._connect()
            start = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                parts = None
                if stream:
                    counter = _PartCounter(resp.getheader("Content-Type", "")) \
                        if count_parts else None
                    nbytes = 0
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        nbytes += len(chunk)
                        if counter is not None:
                            counter.feed(chunk)
                    data = b""
                    parts = counter.parts if counter is not None else None
                else:
                    data = resp.read()
                    nbytes = len(data)
                ms = (time.perf_counter() - start) * 1000
            except (ConnectionError, http.client.HTTPException, OSError):
                # the server closed an idle keep-alive connection: reconnect and send again
                self.close()
                if attempt == 1:
                    raise
                continue
            if resp.will_close:
                self.close()
            return Reply(resp.status, resp.headers, data, ms, nbytes, parts)
        raise AssertionError("unreachable")


class _PartCounter:
    """Counts the parts of a multipart body as it streams by (delimiters across chunks too)."""

    def __init__(self, content_type: str) -> None:
        boundary = ""
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "boundary":
                boundary = value.strip().strip('"')
        self.delimiter = f"--{boundary}".encode() if boundary else b""
        self.seen = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        if not self.delimiter:
            return
        data = self.tail + chunk
        self.seen += data.count(self.delimiter)
        keep = len(self.delimiter) - 1
        self.tail = data[-keep:] if keep else b""

    @property
    def parts(self) -> int | None:
        # n parts have n opening delimiters and one closing "--boundary--"
        return max(0, self.seen - 1) if self.delimiter else None


# ------------------------------------------------------------------------------- results


@dataclass
class Metric:
    """One row of one target: every sample, each repetition's figure, or why there is none."""

    samples: list[float] = field(default_factory=list)  # pooled over the repetitions
    per_rep: dict[int, float] = field(default_factory=dict)  # repetition → its median
    missing: str | None = None  # not implemented by the server (n/a)
    error: str | None = None  # a failed run
    halted: bool = False  # no more requests of this row to this target
    count: int | None = None  # matches / parts / instances, as checked

    def add(self, rep: int, samples: Sequence[float]) -> None:
        if samples:
            self.samples += samples
            self.per_rep[rep] = statistics.median(samples)

    def halt(self, missing: str | None = None, error: str | None = None) -> None:
        self.missing = self.missing or missing
        self.error = self.error or error
        self.halted = True

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def p95(self) -> float | None:
        return _percentile(self.samples, 0.95)


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str  # "ms" (lower is better) or a rate (higher is better)

    @property
    def lower_is_better(self) -> bool:
        return self.unit == "ms"


ROWS = (
    Row("qido_pid", "QIDO /studies?PatientID= (exact)", "ms"),
    Row("qido_name", "QIDO /studies?PatientName=smi*&limit=100", "ms"),
    Row("qido_date", "QIDO /studies?StudyDate=<1 month>&limit=100", "ms"),
    Row("qido_series", "QIDO /studies/{s}/series", "ms"),
    Row("qido_instances", "QIDO /studies/{s}/series/{se}/instances (600)", "ms"),
    Row("meta_cold", "WADO series /metadata (600), cold", "ms"),
    Row("meta_warm", "WADO series /metadata (600), warm", "ms"),
    Row("meta_304", "WADO series /metadata, If-None-Match -> 304", "ms"),
    Row("wado_study", "WADO-RS study retrieval (300 CT 512x512)", "MB/s"),
    Row("stow_ct", "STOW-RS 300 CT 512x512 in POSTs of 50", "inst/s"),
    Row("stow_small", "STOW-RS small MR/CT in POSTs of 50", "inst/s"),
    Row("stow_ct_cpu", "STOW-RS CT: server CPU per instance", "ms"),
    Row("stow_small_cpu", "STOW-RS small: server CPU per instance", "ms"),
    Row("qido_tput", f"QIDO throughput, {THREADS} clients", "q/s"),
)
RAW_ROW = Row("raw_read", "raw read of the same 300 files", "MB/s")
ROW = {r.key: r for r in (*ROWS, RAW_ROW)}
QIDO_KEYS = ("qido_pid", "qido_name", "qido_date", "qido_series", "qido_instances")
# The throughput mix: the study and series queries. The 600-instance answer is left out: one
# of it costs Orthanc as much as hundreds of the others, so it would be all the figure measured.
TPUT_KEYS = ("qido_pid", "qido_name", "qido_date", "qido_series")
STOW_KEYS = ("stow_ct", "stow_small")
COMPARED = QIDO_KEYS + ("meta_cold", "meta_warm", "meta_304", "qido_tput")  # ≤ Orthanc


@dataclass
class Results:
    metrics: dict[tuple[str, str], Metric] = field(default_factory=dict)
    fills: dict[str, tuple[int, float]] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)  # the targets' order per repetition
    loads: list[float] = field(default_factory=list)  # 1-min load average per repetition
    peak_rss: dict[str, int] = field(default_factory=dict)  # target → bytes
    failures: list[str] = field(default_factory=list)  # set-up and server failures
    # (target, "on" | "off", key) → pooled samples of the query-auditing comparison
    audit: dict[tuple[str, str, str], Metric] = field(default_factory=dict)
    audit_writer: dict[str, dict[str, float]] = field(default_factory=dict)  # target → µs

    def metric(self, target: str, key: str) -> Metric:
        return self.metrics.setdefault((target, key), Metric())

    def get(self, target: str, key: str) -> Metric | None:
        return self.metrics.get((target, key))

    def per_rep_ratios(self, target: str, key: str, reference: str = "orthanc",
                       reference_key: str | None = None) -> list[float]:
        """target / reference of each repetition both measured, in repetition order."""
        a, b = self.get(target, key), self.get(reference, reference_key or key)
        if a is None or b is None:
            return []
        return [a.per_rep[r] / b.per_rep[r] for r in sorted(a.per_rep)
                if r in b.per_rep and b.per_rep[r]]

    def all_failures(self) -> list[str]:
        failed = [f"{t}, {ROW[k].title}: {m.error}" for (t, k), m in self.metrics.items()
                  if m.error]
        return self.failures + failed


# --------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class RealSeries:
    """The three 600-instance CT series on disk (one study each) and what QIDO must find."""

    corpus: Corpus
    studies: tuple[str, ...]
    series: tuple[str, ...]
    headers: tuple[tuple[str, str, str], ...]  # (PatientID, PatientName, StudyDate) per study


def ensure_series_corpus(cache: Path = CACHE_DIR) -> RealSeries:
    import pydicom

    root = cache / SERIES_CACHE
    if not (root / ".complete").exists():
        from tests.factories.corpus import generate

        if root.exists():
            shutil.rmtree(root)
        patients, studies, series, instances = SERIES_LAYOUT
        log(f"corpus: generating {patients} CT series of {instances} instances in {root}")
        generate(str(root), patients, studies, series, instances, size="small",
                 seed=SERIES_SEED, id_prefix="DWSERIES", quiet=True)
        (root / ".complete").write_text("ok\n")
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    files = tuple(row["path"] for row in rows)
    study_uids = tuple(dict.fromkeys(row["StudyInstanceUID"] for row in rows))
    series_uids = tuple(dict.fromkeys(row["SeriesInstanceUID"] for row in rows))
    contexts: set[tuple[str, str]] = set()
    headers = []
    for study in study_uids:
        first = next(r["path"] for r in rows if r["StudyInstanceUID"] == study)
        ds = pydicom.dcmread(root / first, stop_before_pixels=True)
        contexts.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        headers.append((str(ds.PatientID), str(ds.PatientName), str(ds.StudyDate)))
    nbytes = sum(int(row["bytes"]) for row in rows)
    corpus = Corpus("series600", root, files, nbytes, frozenset(contexts))
    return RealSeries(corpus, study_uids, series_uids, tuple(headers))


def _extra_headers(corpus: Corpus) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(corpus.root / corpus.files[0], stop_before_pixels=True)
    return str(ds.PatientID), str(ds.PatientName), str(ds.StudyDate)


@dataclass(frozen=True)
class Query:
    key: str
    path: str
    expected: int


def qido_queries(
    studies: Sequence[StudySpec], real: RealSeries, extra: Sequence[tuple[str, str, str]]
) -> dict[str, list[Query]]:
    """For each QIDO row, the requests rotated through and the number of answers each gives.

    `extra` are the (PatientID, PatientName, StudyDate) of the real studies stored on top of the
    synthetic population: they count for the wildcard and range queries too."""
    from urllib.parse import quote

    base = probes(studies)
    smiths = sum(st.smith for st in studies)
    smiths += sum(name.upper().startswith("SMI") for _, name, _ in extra)
    month = sum(MONTH[0] <= st.date <= MONTH[1] for st in studies)
    month += sum(MONTH[0] <= date <= MONTH[1] for _, _, date in extra)
    root = "/dicom-web"
    return {
        "qido_pid": [
            Query("qido_pid", f"{root}/studies?PatientID={quote(p.keys['PatientID'])}", p.expected)
            for p in base["pid"]
        ],
        "qido_name": [
            Query("qido_name", f"{root}/studies?PatientName=smi*&limit=100", min(100, smiths))
        ],
        "qido_date": [
            Query("qido_date", f"{root}/studies?StudyDate={MONTH[0]}-{MONTH[1]}&limit=100",
                  min(100, month))
        ],
        "qido_series": [
            Query("qido_series", f"{root}/studies/{p.keys['StudyInstanceUID']}/series",
                  p.expected)
            for p in base["series"]
        ],
        "qido_instances": [
            Query("qido_instances",
                  f"{root}/studies/{real.studies[0]}/series/{real.series[0]}/instances",
                  SERIES_LAYOUT[3])
        ],
    }


def _json_count(reply: Reply) -> int:
    """Entries of a JSON array answer; -1 when the answer is not one."""
    if reply.status == 204 or not reply.body:
        return 0
    try:
        data = json.loads(reply.body)
    except ValueError:
        return -1
    return len(data) if isinstance(data, list) else -1


def metadata_path(study: str, series: str) -> str:
    return f"/dicom-web/studies/{study}/series/{series}/metadata"


@dataclass(frozen=True)
class StowSet:
    """A corpus as STOW-RS bodies of STOW_BATCH instances, made once, whose UIDs all start
    with ``placeholder``: replaced by :meth:`study_uid` (the same length), each run stores a
    new study without reading and re-encoding the files again (the element lengths, the UIDs'
    padding and the File Meta group length stay as they are)."""

    key: str  # the row: "stow_ct" | "stow_small"
    boundary: str
    bodies: tuple[bytes, ...]
    instances: int
    placeholder: bytes

    @staticmethod
    def study_uid(run: int) -> bytes:
        """What replaces the placeholder in run number ``run`` (1 ≤ run < 9 x 10**7)."""
        return _stow_study_uid(10**7 + run).encode()


def _stow_study_uid(run: int) -> str:
    # the component is 8 digits, never a leading zero (PS3.5 9.1), for every run number
    return f"{UID_ROOT}9.{os.getpid()}.{run}"


def stow_set(key: str, corpus: Corpus) -> StowSet:
    """The corpus as one study of STOW_PATIENT, its series kept apart, in POST bodies."""
    import pydicom
    from pydicom.uid import UID

    study = _stow_study_uid(99_999_999)
    boundary = f"pacsbench{key}"
    series: dict[str, str] = {}
    bodies: list[bytes] = []
    buf = io.BytesIO()
    for i, name in enumerate(corpus.files):
        ds = pydicom.dcmread(corpus.root / name)
        ds.StudyInstanceUID = UID(study)
        old = str(ds.SeriesInstanceUID)
        ds.SeriesInstanceUID = UID(series.setdefault(old, f"{study}.{len(series) + 1}"))
        uid = UID(f"{study}.0.{i + 1}")
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        for keyword, value in STOW_PATIENT.items():
            setattr(ds, keyword, value)
        ds.StudyDate = STOW_STUDY_DATE
        part = io.BytesIO()
        ds.save_as(part, enforce_file_format=True)
        buf.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        buf.write(part.getvalue())
        buf.write(b"\r\n")
        if (i + 1) % STOW_BATCH == 0 or i + 1 == len(corpus.files):
            buf.write(f"--{boundary}--\r\n".encode())
            bodies.append(buf.getvalue())
            buf = io.BytesIO()
    return StowSet(key, boundary, tuple(bodies), len(corpus.files), study.encode())


def _stow_count(reply: Reply) -> int:
    """Instances in the response's ReferencedSOPSequence (0 when it fails or is absent)."""
    try:
        data = json.loads(reply.body)
    except ValueError:
        return 0
    if isinstance(data, list):  # some servers answer an array with one object
        data = data[0] if data else {}
    seq = data.get("00081199", {}).get("Value", []) if isinstance(data, dict) else []
    return len(seq)


def read_files(corpus: Corpus) -> float:
    """Seconds to open and read every file of `corpus` whole (1 MB reads, like the client)."""
    start = time.perf_counter()
    for name in corpus.files:
        with open(corpus.root / name, "rb", buffering=0) as fh:
            while fh.read(1 << 20):
                pass
    return time.perf_counter() - start


def measure_throughput(port: int, queries: list[Query], seconds: float) -> float:
    """Completed queries/s of THREADS threads, each its own keep-alive connection, cycling
    through `queries`; raises RuntimeError when a request fails."""
    if not queries:
        raise RuntimeError("no QIDO query available")
    counts = [0] * THREADS
    errors: list[str] = []
    start_gate = threading.Barrier(THREADS + 1)
    deadline = [0.0]

    def worker(k: int) -> None:
        client = Client(port)
        try:
            client.request("GET", queries[k % len(queries)].path, QIDO_JSON)  # connect, warm
            start_gate.wait()
            i = k
            while time.perf_counter() < deadline[0]:
                reply = client.request("GET", queries[i % len(queries)].path, QIDO_JSON)
                if reply.status != 200:
                    errors.append(f"HTTP {reply.status} for {queries[i % len(queries)].path}")
                    return
                counts[k] += 1
                i += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            start_gate.abort()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(THREADS)]
    for t in threads:
        t.start()
    try:
        deadline[0] = time.perf_counter() + seconds + 3600  # set properly below
        start_gate.wait(timeout=120)
        begin = time.perf_counter()
        deadline[0] = begin + seconds
    except threading.BrokenBarrierError:
        begin = time.perf_counter()
    for t in threads:
        t.join(timeout=seconds + 300)
    elapsed = time.perf_counter() - begin
    if errors:
        raise RuntimeError(f"throughput: {errors[0]}")
    return sum(counts) / elapsed


# ---------------------------------------------------------------------------- repetitions


@dataclass
class Target:
    """A running server under measurement, with the bench's one connection to it."""

    name: str
    http_port: int
    client: Client
    server: PacsServer | BenchOrthanc
    database_url: str | None = None  # pacs's index (the audit writer is measured on it)
    etag: str | None = None  # of the warm series metadata, for the 304 row


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    status: int = 200  # the answer expected
    count: int | None = None  # JSON answers expected


# a row's request number i to a target, or why the target cannot be asked (n/a)
MakeRequest = Callable[[Target, int], "Request | str"]


def _always(req: Request) -> MakeRequest:
    return lambda t, i: req


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """`items` starting at position rep mod len: each repetition, another goes first."""
    k = rep % len(items) if items else 0
    return [*items[k:], *items[:k]]


def _check(reply: Reply, req: Request) -> tuple[str | None, str | None, int | None]:
    """(missing, error, answers) of a reply: an endpoint not there yet, a wrong answer."""
    got = None
    if reply.status != req.status:
        if reply.status in NOT_THERE:
            return f"HTTP {reply.status}", None, None
        if req.status == 304 and 200 <= reply.status < 300:
            return f"HTTP {reply.status}, not 304", None, None
        snippet = reply.body[:160].decode(errors="replace").strip()
        return None, f"{req.path}: HTTP {reply.status} {snippet}", None
    if req.count is not None:
        got = _json_count(reply)
        if got != req.count:
            return None, f"{req.path}: {got} answers, expected {req.count}", got
    return None, None, got


def latency_round(res: Results, key: str, order: Sequence[Target], rep: int | None,
                  requests: int, make: MakeRequest) -> None:
    """`requests` GETs of row `key` to each target, alternating target by target in `order`;
    ``rep`` None is a warm-up (nothing recorded). A target that answers "not there" or fails
    is asked no more; a wrong count is an error, and its time still counts."""
    taken: dict[str, list[float]] = {t.name: [] for t in order}
    for i in range(requests):
        for t in order:
            metric = res.metric(t.name, key)
            if metric.halted:
                continue
            req = make(t, (rep or 0) * requests + i)
            if isinstance(req, str):
                metric.halt(missing=req)
                continue
            try:
                reply = t.client.request("GET", req.path, req.headers)
            except (OSError, http.client.HTTPException) as exc:
                metric.halt(error=f"{req.path}: {type(exc).__name__}: {exc}")
                continue
            missing, error, got = _check(reply, req)
            if missing or reply.status != req.status:
                metric.halt(missing, error)
                continue
            metric.error = metric.error or error
            metric.count = got if got is not None else metric.count
            taken[t.name].append(reply.ms)
    if rep is not None:
        for t in order:
            res.metric(t.name, key).add(rep, taken[t.name])


def wado_round(res: Results, order: Sequence[Target | None], rep: int | None,
               data: Data) -> None:
    """One study retrieval per target and one raw read of the same files (None in `order`),
    in that order; MB/s of the files' bytes. ``rep`` None is a warm-up."""
    mb = data.move.nbytes / 1e6
    n = len(data.move.files)
    path = f"/dicom-web/studies/{data.move_study}"
    for t in order:
        if t is None:
            seconds = read_files(data.move)
            if rep is not None:
                raw = res.metric(RAW, "raw_read")
                raw.add(rep, [mb / seconds])
                raw.count = n
            continue
        metric = res.metric(t.name, "wado_study")
        if metric.halted:
            continue
        try:
            reply = t.client.request("GET", path, {"Accept": WADO_ACCEPT}, stream=True,
                                     count_parts=True)
        except (OSError, http.client.HTTPException) as exc:
            metric.halt(error=f"study retrieval: {type(exc).__name__}: {exc}")
            continue
        if not 200 <= reply.status < 300:
            missing, error, _ = _check(reply, Request(path, {}))
            metric.halt(missing, error)
            continue
        if reply.parts != n:
            metric.error = metric.error or f"study retrieval: {reply.parts} parts, expected {n}"
        metric.count = reply.parts
        if rep is not None:
            metric.add(rep, [mb / (reply.ms / 1000)])


def stow_round(res: Results, stow: StowSet, order: Sequence[Target], rep: int,
               runs: Iterator[int]) -> None:
    """The STOW set into every target as a new study each, POST by POST: the first POST to
    each target in `order`, then the second, and so on, so that the targets' POSTs alternate
    within a second or so and see the same neighbours. ``sync`` before each POST, so that
    none pays for the previous one's writes being flushed. Instances/s over a target's POSTs.
    """
    active = [t for t in order if not res.metric(t.name, stow.key).halted]
    uids = {t.name: stow.study_uid(next(runs)) for t in active}
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={stow.boundary}',
        "Accept": "application/dicom+json",
    }
    stored = dict.fromkeys(uids, 0)
    spent = dict.fromkeys(uids, 0.0)  # ms
    cpu = dict.fromkeys(uids, 0.0)  # seconds of the server process
    for template in stow.bodies:
        for t in active:
            metric = res.metric(t.name, stow.key)
            if metric.halted:
                continue
            body = template.replace(stow.placeholder, uids[t.name])
            os.sync()
            before = _cpu_seconds(t)
            try:
                reply = t.client.request("POST", "/dicom-web/studies", headers, body)
            except (OSError, http.client.HTTPException) as exc:
                metric.halt(error=f"STOW-RS: {type(exc).__name__}: {exc}")
                continue
            cpu[t.name] += _cpu_seconds(t) - before
            if reply.status not in (200, 202):
                missing, error, _ = _check(reply, Request("STOW-RS", {}))
                metric.halt(missing, error or f"STOW-RS: HTTP {reply.status}")
                continue
            spent[t.name] += reply.ms
            stored[t.name] += _stow_count(reply)
    for t in active:
        metric = res.metric(t.name, stow.key)
        if metric.halted:
            continue
        if stored[t.name] != stow.instances:
            metric.error = metric.error or \
                f"STOW-RS: {stored[t.name]} instances acknowledged, {stow.instances} sent"
        metric.count = stored[t.name]
        metric.add(rep, [stow.instances / (spent[t.name] / 1000)])
        res.metric(t.name, f"{stow.key}_cpu").add(rep, [cpu[t.name] / stow.instances * 1000])


def _cpu_seconds(t: Target) -> float:
    """User + system CPU time of the target's server process so far (its threads included,
    not other processes: PostgreSQL's work for pacs-postgres is not in it)."""
    proc = t.server.proc
    if proc is None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput_round(res: Results, order: Sequence[Target], rep: int,
                     queries: dict[str, list[Query]], seconds: float) -> None:
    """A throughput window per target, of the QIDO queries that target answers."""
    for t in order:
        metric = res.metric(t.name, "qido_tput")
        if metric.halted:
            continue
        mix = [q for key in TPUT_KEYS
               if (m := res.get(t.name, key)) is not None and m.samples and not m.halted
               for q in queries[key]]
        try:
            rate = measure_throughput(t.http_port, mix, seconds)
        except RuntimeError as exc:
            metric.halt(error=str(exc))
            continue
        metric.add(rep, [rate])


def measure(res: Results, targets: Sequence[Target], data: Data,
            args: argparse.Namespace) -> None:
    """Cold metadata, the warm-ups, then the repetitions (see the module docstring)."""
    real = data.real
    queries = qido_queries(data.studies, real, data.extra)
    log("cold metadata: the first request for each 600-instance series, targets in turn")
    for i, (study, series) in enumerate(zip(real.studies, real.series, strict=True)):
        cold = Request(metadata_path(study, series), QIDO_JSON, count=SERIES_LAYOUT[3])
        latency_round(res, "meta_cold", rotated(targets, i), i, 1, _always(cold))

    warm_path = metadata_path(real.studies[0], real.series[0])

    def qido(key: str) -> MakeRequest:
        return lambda t, i: Request(queries[key][i % len(queries[key])].path, QIDO_JSON,
                                    count=queries[key][i % len(queries[key])].expected)

    def warm(t: Target, i: int) -> Request:
        return Request(warm_path, QIDO_JSON, count=SERIES_LAYOUT[3])

    def not_modified(t: Target, i: int) -> Request | str:
        if not t.etag:
            return "no ETag"
        return Request(warm_path, {**QIDO_JSON, "If-None-Match": t.etag}, status=304)

    latency_rows: list[tuple[str, MakeRequest]] = [
        *((key, qido(key)) for key in QIDO_KEYS), ("meta_warm", warm),
        ("meta_304", not_modified),
    ]
    log("warm-up: 3 requests of each latency row, 1 study retrieval per target")
    for key, make in latency_rows:
        if key == "meta_304":  # the ETag of the warm answer
            for t in targets:
                t.etag = t.client.request("GET", warm_path, QIDO_JSON).headers.get("ETag")
        latency_round(res, key, targets, None, 3, make)
    wado_round(res, [*targets, None], None, data)

    runs = itertools.count(1)  # STOW-RS run numbers: a new study each
    for rep in range(args.reps):
        order = rotated(targets, rep)
        res.orders.append([t.name for t in order])
        res.loads.append(os.getloadavg()[0])
        for key, make in latency_rows:
            latency_round(res, key, order, rep, args.requests, make)
        wado_round(res, rotated([*targets, None], rep), rep, data)
        if rep < args.stow_reps:
            for stow in data.stows:
                stow_round(res, stow, order, rep, runs)
        if args.throughput_seconds > 0:
            throughput_round(res, order, rep, queries, args.throughput_seconds)
        log(f"rep {rep + 1}/{args.reps} ({', '.join(res.orders[-1])}; load "
            f"{res.loads[-1]:.1f}): " + "; ".join(_rep_summary(res, t.name, rep)
                                                  for t in targets))


def _rep_summary(res: Results, target: str, rep: int) -> str:
    parts = []
    for key, label, digits in (("qido_pid", "PatientID ms", 1), ("wado_study", "WADO MB/s", 0),
                               ("stow_ct", "STOW CT/s", 0), ("stow_small", "small/s", 0),
                               ("qido_tput", "q/s", 0)):
        m = res.get(target, key)
        if m is not None and rep in m.per_rep:
            parts.append(f"{label} {m.per_rep[rep]:.{digits}f}")
    return f"{target} " + (", ".join(parts) or "-")


# ------------------------------------------------------------------------------- servers


class WebPacs(PacsServer):
    """bench.query's ``pacs serve`` that also remembers its HTTP port."""

    http_port: int = 0
    audit_queries: bool = True  # PACS_AUDIT_QUERIES (the server's default is on)

    def start(self) -> None:
        self.port, self.http_port = free_port(), free_port()
        argv = [
            *self.command, "serve", "--data-dir", str(self.data_dir), "--ae-title", self.aet,
            "--dimse-port", str(self.port), "--http-port", str(self.http_port), "--http-host",
            LOOPBACK, "--database-url", self.database_url, "--dimse-processes", "1",
        ]
        env = server_env()
        if not self.audit_queries:
            env["PACS_AUDIT_QUERIES"] = "false"
        self.proc = start_process(argv, self.work / "pacs.log", env=env, cwd=REPO)
        health = f"http://{LOOPBACK}:{self.http_port}/health"
        wait_until(lambda: http_ok(health), self.proc, 180, "pacs serve")


class WebOrthanc(BenchOrthanc):
    """bench.query's Orthanc plus the DICOMweb plugin, metadata read from the files ("Full")."""

    plugin: str = ""

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config = orthanc_config(
            self.work, self.http_port, self.dicom_port, self.aet, self.calling_aet
        )
        config["LimitFindResults"] = 1000
        config["HttpThreadsCount"] = 8
        config["Plugins"] = [self.plugin]
        config["DicomWeb"] = {
            "Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False,
            "StudiesMetadata": "Full", "SeriesMetadata": "Full",
        }
        path = self.work / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.proc = start_process(
            [self.binary, str(path)], self.work / "orthanc.log", env=self.env, cwd=self.work
        )
        wait_until(lambda: http_ok(f"{self.url}/system"), self.proc, 60, "Orthanc")
        if not http_ok(f"{self.url}/dicom-web/studies?limit=1"):
            raise RuntimeError("Orthanc's DICOMweb plugin does not answer /dicom-web/studies")


def ensure_plugin() -> str | None:
    """Find Orthanc's DICOMweb plugin; as root, ``apt-get install -y orthanc-dicomweb`` once."""
    found = find_dicomweb_plugin()
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    log("orthanc: DICOMweb plugin missing; running apt-get install -y orthanc-dicomweb")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "orthanc-dicomweb"], env=env,
                   capture_output=True, check=False)
    return find_dicomweb_plugin()


AUDIT_KEYS = ("qido_pid", "qido_name", "qido_series")  # a cheap, a wildcard, a series query


def measure_audit_cost(res: Results, target: str, server: WebPacs, data: Data,
                       args: argparse.Namespace) -> None:
    """QIDO-RS latency and throughput with query auditing on (``server``) and off (a second
    ``pacs serve`` on the same data dir and index, ``PACS_AUDIT_QUERIES=false``). Latency
    requests alternate between the two, one by one, and throughput windows alternate too, so
    the machine's other load falls on both alike."""
    queries = qido_queries(data.studies, data.real, data.extra)
    mix = [q for key in TPUT_KEYS for q in queries[key]]
    off = WebPacs(server.command, server.work / "audit-off", server.data_dir,
                  server.database_url, 0)
    off.work.mkdir(parents=True, exist_ok=True)
    off.audit_queries = False
    off.start()
    servers = {"on": server, "off": off}
    clients = {state: Client(s.http_port) for state, s in servers.items()}
    try:
        for key in AUDIT_KEYS:
            for state in servers:
                res.audit[(target, state, key)] = Metric()
            for number in range(args.audit_rounds * args.reps + 3):
                q = queries[key][number % len(queries[key])]
                for state in (("on", "off") if number % 2 else ("off", "on")):
                    reply = clients[state].request("GET", q.path, QIDO_JSON)
                    metric = res.audit[(target, state, key)]
                    if reply.status != 200 or _json_count(reply) != q.expected:
                        metric.error = metric.error or f"HTTP {reply.status} for {q.path}"
                    elif number >= 3:
                        metric.samples.append(reply.ms)
                        metric.count = q.expected
        if args.throughput_seconds > 0:
            for number in range(args.audit_rounds):
                for state in (("on", "off") if number % 2 else ("off", "on")):
                    pooled = res.audit.setdefault((target, state, "qido_tput"), Metric())
                    try:
                        pooled.samples.append(measure_throughput(
                            servers[state].http_port, mix, args.throughput_seconds))
                    except RuntimeError as exc:
                        pooled.error = pooled.error or str(exc)
    finally:
        for client in clients.values():
            client.close()
        off.stop()
    for (where, state, key), metric in res.audit.items():
        if where == target and metric.error:
            res.failures.append(f"{target}, auditing {state}, {ROW[key].title}: {metric.error}")


def audit_writer_cost(database_url: str, events: int = 5000) -> dict[str, float]:
    """The query audit's own cost, in this process on the target's index (no HTTP, so the
    machine's load hardly blurs it): CPU per queued query, CPU and wall time per event
    written in background batches of 150 (300 queries/s at the 0.5 s flush interval), and a
    write transaction per query, as a synchronous audit would cost."""
    from pacs.services.audit import AuditTrail
    from storage.attributes import Level
    from storage.index import Index
    from storage.query import Condition, Query, SingleValue, Wildcard

    index = Index(database_url)
    query = Query(level=Level.STUDY, limit=100, conditions=(
        Condition("PatientID", SingleValue("P123")), Condition("PatientName", Wildcard("smi*"))))
    try:
        # a huge batch and no timer: the writer thread never writes, flush() does, measured
        trail = AuditTrail(index=index, flush_interval_s=3600, batch_size=10**9,
                           max_pending=10**9)
        cpu = time.process_time()
        for _ in range(events):
            trail.query(who="http:127.0.0.1", how="QIDO-RS", query=query, matches=3)
        enqueue = (time.process_time() - cpu) / events
        trail.batch_size = 150
        cpu, wall = time.process_time(), time.perf_counter()
        trail.flush()
        batched_cpu = (time.process_time() - cpu) / events
        batched_wall = (time.perf_counter() - wall) / events
        trail.close()
        single = 300
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(single):
            trail.record(who="http:127.0.0.1", action="query", outcome="3 matches",
                         detail={"how": "QIDO-RS", "level": "STUDY", "matches": 3})
        sync_cpu = (time.process_time() - cpu) / single
        sync_wall = (time.perf_counter() - wall) / single
    finally:
        index.dispose()
    return {"enqueue_us": enqueue * 1e6, "batched_cpu_us": batched_cpu * 1e6,
            "batched_wall_us": batched_wall * 1e6, "sync_cpu_us": sync_cpu * 1e6,
            "sync_wall_us": sync_wall * 1e6}


# ---------------------------------------------------------------------------------- set-up


@dataclass
class Data:
    studies: list[StudySpec]
    real: RealSeries
    move: Corpus
    move_study: str
    extra: list[tuple[str, str, str]]
    stows: tuple[StowSet, ...]


def store(corpus: Corpus, port: int, aet: str, work: Path, what: str) -> float:
    profile = write_storescu_profile(corpus.contexts, work / f"storescu-{what}.cfg")
    outcome = send(corpus, profile, port, aet, Shape(what, corpus.size, 1), work)
    if outcome.error:
        raise RuntimeError(f"storing {what} failed: {outcome.error}")
    return outcome.seconds


def store_real(name: str, port: int, aet: str, data: Data, work: Path) -> None:
    log(f"  {name}: storing 3 x 600-instance series and the 300-instance CT study (storescu)")
    seconds = store(data.real.corpus, port, aet, work, "series600")
    log(f"    series: {len(data.real.corpus.files)} in {seconds:.1f} s")
    seconds = store(data.move, port, aet, work, "ct300")
    log(f"    CT study: {len(data.move.files)} in {seconds:.1f} s")


@contextmanager
def pacs_target(res: Results, backend: str, data: Data, root: Path, command: list[str],
                postgres: str) -> Iterator[Target]:
    """pacs filled, started and given the real files; stopped (and its database dropped)
    when the context ends."""
    name = f"pacs-{backend}"
    work = root / name
    work.mkdir(parents=True)
    data_dir = work / "data"
    with _database(backend, postgres, data_dir) as url:
        count = len(data.studies) * INSTANCES_PER_STUDY
        log(f"{name}: filling the index with {count:,} instances")
        seconds = fill_pacs(url, data_dir, data.studies)
        res.fills[name] = (count, seconds)
        log(f"  filled in {seconds:.1f} s")
        server = WebPacs(command, work, data_dir, url, 0)
        try:
            server.start()
            store_real(name, server.port, server.aet, data, work)
            target = Target(name, server.http_port, Client(server.http_port), server, url)
            try:
                yield target
            finally:
                target.client.close()
        except Exception:
            tail = server.log_tail()
            if tail:
                log(f"  last lines of the {name} log:\n" + _indent(tail))
            raise
        finally:
            server.stop()


@contextmanager
def orthanc_target(res: Results, binary: str, plugin: str, data: Data,
                   root: Path) -> Iterator[Target]:
    """Orthanc filled, restarted (a fresh process, like pacs) and given the real files."""
    name = "orthanc"
    work = root / name
    work.mkdir(parents=True)
    orthanc = WebOrthanc(binary, work / "server", calling_aet=CALLING_AET, env=server_env())
    orthanc.plugin = plugin
    try:
        orthanc.start()
        log(f"orthanc: filling with {len(data.studies) * 10:,} instances (POST /instances, "
            "4 threads)")
        seconds = fill_orthanc(orthanc.http_port, data.studies)
        count = orthanc.instance_count()
        if count != len(data.studies) * INSTANCES_PER_STUDY:
            raise RuntimeError(f"Orthanc holds {count} instances after the fill")
        res.fills[name] = (count, seconds)
        log(f"  filled in {seconds:.1f} s")
        orthanc.stop()
        orthanc.start()
        store_real(name, orthanc.dicom_port, orthanc.aet, data, work)
        target = Target(name, orthanc.http_port, Client(orthanc.http_port), orthanc)
        try:
            yield target
        finally:
            target.client.close()
    except Exception:
        log("  last lines of the Orthanc log:\n" + _indent(orthanc.log_tail()))
        raise
    finally:
        orthanc.stop()


def _enter(stack: ExitStack, res: Results, targets: list[Target], name: str,
           opening: AbstractContextManager[Target]) -> None:
    try:
        targets.append(stack.enter_context(opening))
    except Exception as exc:
        res.failures.append(f"{name}: {type(exc).__name__}: {exc}")
        log(f"{name} FAILED: {type(exc).__name__}: {exc}")


def after_measuring(res: Results, targets: Sequence[Target]) -> None:
    """Peak RSS of each server, and any that died during the repetitions."""
    for t in targets:
        proc = t.server.proc
        if proc is None:
            continue
        if proc.poll() is not None:
            res.failures.append(f"{t.name}: exited with code {proc.returncode} during the "
                                "measurements")
            log(f"{t.name} exited:\n" + _indent(t.server.log_tail()))
            continue
        rss = peak_rss_bytes(proc.pid)
        if rss is not None:
            res.peak_rss[t.name] = rss


# -------------------------------------------------------------------------------- report


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(res: Results, target: str, key: str) -> str:
    m = res.get(target, key)
    if m is None:
        return "–"
    if not m.samples:
        text = f"n/a ({m.missing})" if m.missing else "n/a"
        return text + (" ERR" if m.error else "")
    row = ROW[key]
    if row.unit == "ms" and len(m.samples) > 3:
        text = f"{_num(m.median)} / {_num(m.p95)}"
    elif row.unit == "ms":
        text = _num(m.median)
    else:
        text = _num(m.median, 0)
    if m.count is not None and key.startswith("qido_") and key != "qido_tput":
        text += f" ({m.count})"
    return text + (" ERR" if m.error else "")


def _spread(ratios: Sequence[float]) -> str:
    """"median (min-max)" of per-repetition ratios."""
    if not ratios:
        return "n/a"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _wado_vs_raw(res: Results, target: str) -> list[float]:
    return res.per_rep_ratios(target, "wado_study", reference=RAW, reference_key="raw_read")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def render(res: Results, targets: Sequence[str], meta: dict[str, str]) -> str:
    out = [f"# DICOMweb benchmark {meta['when']}", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k != "when"]
    pacs = [t for t in targets if t.startswith("pacs-")]
    orthanc = "orthanc" in targets
    head = "| measurement | unit | " + " | ".join(targets)
    rule = "|---|---|" + "---:|" * len(targets)
    if orthanc:
        head += " | " + " | ".join(f"{t} / orthanc" for t in pacs)
        rule += "---:|" * len(pacs)
    out += ["", f"## Results ({len(res.orders)} repetitions, targets interleaved)", "",
            "Figures: ms rows median / p95 of every request, QIDO answers in brackets; rates "
            "the median of the repetitions. Ratios pacs / Orthanc: the median of the "
            "per-repetition ratios, (min-max) in brackets; for ms rows a time ratio (≤ 1: "
            "pacs at least as fast), for rates (MB/s, inst/s, q/s) a rate ratio (≥ 1). "
            "Cold metadata: one request per series, so its \"repetitions\" are the three "
            "series. Server CPU: user + system time of the server process during its STOW-RS "
            "POSTs (pacs-postgres: without PostgreSQL's processes).", "", head + " |", rule]
    for row in ROWS:
        cells = [_cell(res, t, row.key) for t in targets]
        if orthanc:
            cells += [_spread(res.per_rep_ratios(t, row.key)) for t in pacs]
        out.append(f"| {row.title} | {row.unit} | " + " | ".join(cells) + " |")
    cells = [_spread(_wado_vs_raw(res, t)) for t in targets]
    if orthanc:
        cells += [""] * len(pacs)
    out.append("| WADO-RS retrieval / raw read | ratio | " + " | ".join(cells) + " |")
    raw = res.get(RAW, "raw_read")
    if raw is not None and raw.samples:
        out += ["", f"Raw read of the same 300 files (page cache, 1 MB reads), taking its turn "
                f"in the rotation: median {raw.median:.0f} MB/s, "
                f"{min(raw.samples):.0f}-{max(raw.samples):.0f} per repetition."]
    out += _goals(res, pacs, orthanc)
    if orthanc:
        out += _stow_table(res, pacs)
    out += _audit_table(res, pacs)
    out += _machine(res, targets)
    failures = res.all_failures()
    if failures:
        out += ["", "## Failed runs", ""] + [f"- {f}" for f in failures]
    return "\n".join(out) + "\n"


def _goals(res: Results, pacs: Sequence[str], orthanc: bool) -> list[str]:
    out = ["", "## The issues' targets", "", "| target | goal | measured | verdict |",
           "|---|---|---|---|"]
    absolute = (
        ("qido_pid", GOAL_EXACT_MS), ("qido_series", GOAL_EXACT_MS),
        ("qido_name", GOAL_WILDCARD_MS), ("qido_date", GOAL_WILDCARD_MS),
        ("meta_cold", GOAL_META_COLD_MS), ("meta_warm", GOAL_META_WARM_MS),
        ("meta_304", GOAL_304_MS),
    )
    for t in pacs:
        if orthanc:
            for key in STOW_KEYS:
                ratios = res.per_rep_ratios(t, key)
                met = sum(r >= GOAL_STOW_VS_ORTHANC for r in ratios)
                measured = "n/a" if not ratios else (
                    f"{_spread(ratios)}; met in {met} of {len(ratios)} repetitions")
                out.append(f"| {t}: {ROW[key].title} vs Orthanc, in every repetition | "
                           f"≥ {GOAL_STOW_VS_ORTHANC:g}x | {measured} | "
                           f"{_verdict(None if not ratios else met == len(ratios))} |")
        for key, goal in absolute:
            m = res.get(t, key)
            value = m.median if m is not None else None
            measured = "n/a" if value is None else f"{value:.1f} ms"
            out.append(f"| {t}: {ROW[key].title} median | < {goal:g} ms | {measured} | "
                       f"{_verdict(None if value is None else value < goal)} |")
        ratios = _wado_vs_raw(res, t)
        value = _median(ratios)
        out.append(f"| {t}: WADO-RS study retrieval / raw read | ≥ {GOAL_WADO_VS_RAW:g} | "
                   f"{_spread(ratios)} | "
                   f"{_verdict(None if value is None else value >= GOAL_WADO_VS_RAW)} |")
        if orthanc:
            for key in COMPARED:
                ratios = res.per_rep_ratios(t, key)
                value = _median(ratios)
                lower = ROW[key].lower_is_better
                wanted = "≤ 1 (time)" if lower else "≥ 1 (rate)"
                ok = None if value is None else (value <= 1 if lower else value >= 1)
                out.append(f"| {t}: {ROW[key].title} vs Orthanc (median) | {wanted} | "
                           f"{_spread(ratios)} | {_verdict(ok)} |")
    return out


def _stow_table(res: Results, pacs: Sequence[str]) -> list[str]:
    """Each repetition's STOW-RS ratios against the goal."""
    reps = sorted({r for t in ("orthanc", *pacs) for key in STOW_KEYS
                   if (m := res.get(t, key)) is not None for r in m.per_rep})
    if not reps:
        return []
    columns = [(t, key) for t in pacs for key in STOW_KEYS]
    out = ["", f"## STOW-RS per repetition (pacs / Orthanc, goal ≥ {GOAL_STOW_VS_ORTHANC:g})",
           "", "| repetition | order | 1-min load | "
           + " | ".join(f"{t} {key.removeprefix('stow_')}" for t, key in columns) + " |",
           "|---:|---|---:|" + "---|" * len(columns)]
    for r in reps:
        cells = []
        for t, key in columns:
            a, b = res.get(t, key), res.get("orthanc", key)
            if a is None or b is None or r not in a.per_rep or not b.per_rep.get(r):
                cells.append("n/a")
                continue
            ratio = a.per_rep[r] / b.per_rep[r]
            cells.append(f"{ratio:.2f} {'met' if ratio >= GOAL_STOW_VS_ORTHANC else 'MISSED'} "
                         f"({a.per_rep[r]:.0f} / {b.per_rep[r]:.0f})")
        order = ", ".join(res.orders[r]) if r < len(res.orders) else ""
        load = f"{res.loads[r]:.1f}" if r < len(res.loads) else ""
        out.append(f"| {r + 1} | {order} | {load} | " + " | ".join(cells) + " |")
    out += ["", "Cells: ratio, verdict (pacs inst/s / Orthanc inst/s)."]
    return out


def _machine(res: Results, targets: Sequence[str]) -> list[str]:
    out = ["", "## Fill, memory and the machine's load", "",
           "| target | instances | fill seconds | instances/s | peak RSS after the "
           "repetitions |", "|---|---:|---:|---:|---:|"]
    for t in targets:
        n, s = res.fills.get(t, (0, 0.0))
        rss = res.peak_rss.get(t)
        out.append(f"| {t} | {n:,} | {s:.1f} | {n / s if s else 0:.0f} | "
                   f"{'n/a' if rss is None else f'{rss / 2**20:.0f} MB'} |")
    if res.loads:
        out += ["", f"1-min load average at the start of each repetition: min "
                f"{min(res.loads):.1f}, median {statistics.median(res.loads):.1f}, max "
                f"{max(res.loads):.1f} ({os.cpu_count()} CPUs). Above the CPU count, other "
                "work shared the machine: the interleaving spreads it over every target, and "
                "the per-repetition spread shows how much it moved a ratio."]
    return out


def _audit_table(res: Results, pacs: Sequence[str]) -> list[str]:
    """Query auditing on vs off: medians / p95 of the pooled samples, and on / off."""
    keys = [*AUDIT_KEYS, "qido_tput"]
    if not any((t, "on", k) in res.audit for t in pacs for k in keys) and not res.audit_writer:
        return []
    out = ["", "## Query auditing: QIDO-RS with audit_queries off and on", "",
           "Two servers on the same data, auditing off and on, requests alternating between "
           "them one by one; ms rows: median / p95.", "",
           "| target | measurement | unit | auditing off | auditing on | on / off (median) |",
           "|---|---|---|---:|---:|---:|"]
    for t in pacs:
        for key in keys:
            off, on = res.audit.get((t, "off", key)), res.audit.get((t, "on", key))
            if off is None or on is None or not off.samples or not on.samples:
                continue
            row = ROW[key]
            if row.unit == "ms":
                cells = [f"{_num(m.median, 2)} / {_num(m.p95, 2)}" for m in (off, on)]
            else:
                cells = [_num(m.median, 0) for m in (off, on)]
            ratio = (on.median or 0) / off.median if off.median else None
            out.append(f"| {t} | {row.title} | {row.unit} | {cells[0]} | {cells[1]} | "
                       f"{_num(ratio, 3)} |")
    if res.audit_writer:
        out += ["", "The audit writer alone, in one process on the same index (microseconds "
                "per query; batches of 150 are 300 queries/s at the 0.5 s flush interval):", "",
                "| target | queue a query (CPU) | background batch write, per query (CPU / "
                "wall) | a write transaction per query instead (CPU / wall) |",
                "|---|---:|---:|---:|"]
        for t, c in res.audit_writer.items():
            out.append(f"| {t} | {c['enqueue_us']:.1f} | {c['batched_cpu_us']:.1f} / "
                       f"{c['batched_wall_us']:.1f} | {c['sync_cpu_us']:.0f} / "
                       f"{c['sync_wall_us']:.0f} |")
    return out


def _environment(args: argparse.Namespace, orthanc_binary: str | None, plugin: str | None,
                 data: Data) -> dict[str, str]:
    ns = argparse.Namespace(reps=args.reps, all_reps=0, findscu_reps=0, retrieve_reps=0)
    meta = environment(ns, orthanc_binary, data.move)
    for key in ("C-FIND SCU", "STUDY return keys", "retrieve study", "fill (Orthanc)"):
        meta.pop(key, None)
    if plugin:
        meta["Orthanc DICOMweb plugin"] = (
            f"{plugin} ({_dpkg_version('orthanc-dicomweb')}); StudiesMetadata and "
            "SeriesMetadata \"Full\" (read from the files), HttpThreadsCount 8, "
            "LimitFindResults 1000, SQLite index, no compression"
        )
        meta["fill (Orthanc)"] = (
            "the same headers + 8x8 16-bit pixels as DICOM files, REST POST /instances, "
            "4 threads; then Orthanc restarted"
        )
    meta["index"] = f"{len(data.studies) * INSTANCES_PER_STUDY:,} instances (--scale)"
    meta["real data (storescu, TCP_NODELAY=1, after the server started)"] = (
        f"3 CT series x 600 instances (128x128 16-bit, "
        f"{data.real.corpus.nbytes / len(data.real.corpus.files) / 1e3:.0f} kB; "
        f"tests/factories/corpus.py seed {SERIES_SEED}); the CT study of 300 x 512x512 "
        f"({data.move.nbytes / 1e6:.0f} MB, bench.query's)"
    )
    meta["interleaving"] = (
        "every target set up first and left running; then each repetition measures every "
        "row on every target, target after target, the order rotated by one each repetition "
        "(latency requests alternate target by target); ratios pacs / Orthanc per repetition"
    )
    meta["client"] = (
        "http.client, one keep-alive connection per target (TCP_NODELAY), Accept-Encoding "
        f"identity; {args.reps} repetitions x {args.requests} requests per latency row and "
        "target after 3 warm-up, rotating over 20 patients / studies for PatientID and "
        "series-in-study; time = request sent to last body byte"
    )
    meta["cold metadata"] = (
        "first request for each of the 3 series, right after storing them into a freshly "
        "started server (nothing had asked for their metadata); the targets in turn, the "
        "order rotated per series; median of 3"
    )
    meta["WADO-RS retrieval"] = (
        f"GET /studies/{{s}} Accept {WADO_ACCEPT}; 1 warm-up, then one per repetition and "
        "target, with a raw read of the 300 files (1 MB reads, page cache warm) taking its "
        "turn in the rotation; MB/s of file bytes"
    )
    stow_runs = min(args.stow_reps, args.reps)
    small = next((s for s in data.stows if s.key == "stow_small"), None)
    meta["STOW-RS"] = (
        f"in the first {stow_runs} repetitions, into each target: the 300 CT 512x512 "
        + (f"and {small.instances:,} small MR/CT instances (bench.ingest's small corpus, "
           f"{sum(map(len, small.bodies)) / small.instances / 1e3:.0f} kB on average) "
           if small else "")
        + f"as a new study each time, POSTs of {STOW_BATCH} on one connection per target, "
        "the targets' POSTs alternating (POST 1 to each target in the repetition's order, "
        "then POST 2, ...), sync before each POST; instances/s over a target's POSTs, and "
        "the server process's CPU time (/proc) during them per instance"
    )
    meta["QIDO throughput"] = (
        f"{THREADS} threads x own keep-alive connection for {args.throughput_seconds:g} s per "
        "target and repetition, cycling through the study and series QIDO requests "
        "(PatientID, smi*, month, series in study; not the 600-instance one) that the server "
        "answers"
    )
    return meta


def _dpkg_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip() or "?"


# ---------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.dicomweb", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--scale", type=int, default=100_000,
                    help="instances in the index (default 100000; below 10000 the month "
                    "query matches nothing)")
    ap.add_argument("--targets", default="sqlite",
                    help="pacs index backends: sqlite,postgresql (default sqlite)")
    ap.add_argument("--orthanc", action="store_true",
                    help="also Orthanc + its DICOMweb plugin on the same data")
    ap.add_argument("--reps", type=int, default=50,
                    help="repetitions: every row measured on every target in each (50)")
    ap.add_argument("--requests", type=int, default=3,
                    help="requests per latency row, target and repetition (3)")
    ap.add_argument("--stow-reps", type=int, default=20,
                    help="STOW-RS in the first N repetitions (20; 0 skips): each stores a "
                    "new 300-instance CT study and a new small study into every target")
    ap.add_argument("--stow-small", type=int, default=1000,
                    help="small MR/CT instances of the small STOW-RS row (1000; 0 skips it)")
    ap.add_argument("--throughput-seconds", type=float, default=2.0,
                    help="the 8-client QIDO window per target and repetition (2; 0 skips)")
    ap.add_argument("--audit-rounds", type=int, default=4,
                    help="query auditing on vs off: x --reps requests and throughput windows "
                    "per server (4; 0 skips)")
    ap.add_argument("--output", type=Path, default=RESULTS_FILE,
                    help="the report (default bench/RESULTS-dicomweb.md)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where servers keep their data (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep server data and logs")
    args = ap.parse_args(argv)
    if args.scale < 200:
        ap.error("--scale must be at least 200")
    names = [t.strip().lower() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from sqlite, postgresql")
    args.targets = list(dict.fromkeys(BACKENDS[n] for n in names))
    if args.reps < 1 or args.requests < 1:
        ap.error("--reps and --requests must be >= 1")
    if args.stow_reps < 0 or args.stow_small < 0:
        ap.error("--stow-reps and --stow-small must be >= 0")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if shutil.which("storescu") is None:
        log("storescu not found: install DCMTK (apt-get install dcmtk)")
        return 2
    postgres = os.environ.get("PACS_BENCH_POSTGRES", DEFAULT_POSTGRES)
    command = pacs_command()
    backends = list(args.targets)
    problem = pacs_problem(command)
    if problem:
        log(f"pacs: cannot run ({problem})")
        backends = []
    if "postgres" in backends:
        problem = postgres_problem(postgres)
        if problem:
            log(f"pacs-postgres: skipped: {problem}")
            backends.remove("postgres")
    orthanc_binary = plugin = None
    if args.orthanc:
        orthanc_binary = ensure_orthanc(log)
        plugin = ensure_plugin() if orthanc_binary else None
        if orthanc_binary is None or plugin is None:
            log("orthanc: Orthanc or its DICOMweb plugin is not installed: skipped")
            orthanc_binary = None
        elif processes_named("Orthanc"):
            log("orthanc: note: another Orthanc is running (not ours); left alone")
    if not backends and orthanc_binary is None:
        log("nothing can run")
        return 2

    data = prepare(args)
    res = Results()
    root = Path(tempfile.mkdtemp(prefix="pacs-dwbench-", dir=args.work_dir))
    names = [f"pacs-{b}" for b in backends] + (["orthanc"] if orthanc_binary else [])
    try:
        with ExitStack() as stack:
            targets: list[Target] = []
            for backend in backends:
                _enter(stack, res, targets, f"pacs-{backend}",
                       pacs_target(res, backend, data, root, command, postgres))
            if orthanc_binary and plugin:
                _enter(stack, res, targets, "orthanc",
                       orthanc_target(res, orthanc_binary, plugin, data, root))
            if targets:
                log(f"measuring {', '.join(t.name for t in targets)}: {args.reps} repetitions")
                measure(res, targets, data, args)
                after_measuring(res, targets)
                for t in targets:
                    if isinstance(t.server, WebPacs) and t.database_url and args.audit_rounds:
                        audit(res, t.name, t.server, t.database_url, data, args)
    finally:
        if args.keep:
            log(f"kept server data and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    report = render(res, names, _environment(args, orthanc_binary, plugin, data))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamped = RESULTS_DIR / f"dicomweb-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    stamped.write_text(report, encoding="utf-8")
    args.output.write_text(report, encoding="utf-8")
    log("")
    log(report)
    log(f"written to {_rel(args.output)} and {_rel(stamped)}")
    return 1 if res.all_failures() else 0


def audit(res: Results, name: str, server: WebPacs, database_url: str, data: Data,
          args: argparse.Namespace) -> None:
    """Query auditing on vs off on this pacs, then the writer alone on its index."""
    log(f"  {name}: QIDO-RS with query auditing off and on, "
        f"{args.audit_rounds} x {args.reps} requests each")
    try:
        measure_audit_cost(res, name, server, data, args)
        server.stop()  # the writer measured alone on the same index
        res.audit_writer[name] = audit_writer_cost(database_url)
    except Exception as exc:
        res.failures.append(f"{name}, query auditing: {type(exc).__name__}: {exc}")
        log(f"{name} query auditing FAILED: {type(exc).__name__}: {exc}")


def prepare(args: argparse.Namespace) -> Data:
    """The population, the corpora (page cache warmed: no target pays for cold reads) and
    the STOW-RS bodies."""
    studies = population(args.scale // INSTANCES_PER_STUDY)
    real = ensure_series_corpus()
    move = ensure_move_corpus()
    corpora = [real.corpus, move]
    stows: list[StowSet] = []
    if args.stow_reps > 0:
        stows.append(stow_set("stow_ct", move))
        if args.stow_small > 0:
            small = ensure_corpus("small", args.stow_small)
            corpora.append(small)
            stows.append(stow_set("stow_small", small))
    for corpus in corpora:
        for name in corpus.files:
            (corpus.root / name).read_bytes()
    extra = [*real.headers, _extra_headers(move)]
    return Data(studies, real, move, move_study_uid(move), extra, tuple(stows))


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
