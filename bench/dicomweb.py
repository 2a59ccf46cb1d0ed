"""DICOMweb benchmark (issue 4): QIDO-RS, WADO-RS and STOW-RS of pacs on the Q/R bench's index.

    python -m bench.dicomweb                                  # 100,000 instances, pacs on SQLite
    python -m bench.dicomweb --orthanc                        # plus Orthanc + its DICOMweb plugin
    python -m bench.dicomweb --targets sqlite,postgresql --orthanc
    python -m bench.dicomweb --scale 10000 --reps 20 --orthanc  # quick run (a few minutes)

What one target's run is (bench/README.md has the long version):

* The index holds bench.query's synthetic population (10 instances a study, CT/MR/CR, about
  1,000 studies a year from 2015), ``--scale`` instances: for pacs through the ingest service's
  index path (``bench.query.fill_pacs``; no blobs), for Orthanc as real 8x8 files through
  ``POST /instances`` (``bench.query.fill_orthanc``); ``fill_pacs`` marks the studies stable
  (QA stability check done, as in an archive filled long ago: their files do not exist, and
  the check would quarantine them). Then the server is (re)started.
* Real files are stored into the running server with DCMTK ``storescu`` (``TCP_NODELAY=1``):
  three CT series of 600 instances each (128x128 16-bit, about 39 kB, from
  ``tests/factories/corpus.py``; one study each) and bench.query's 300-instance CT 512x512 study.
  Only these are read back by WADO-RS: pacs has no blobs for the index-only population.
* HTTP client: ``http.client`` with ONE keep-alive connection per client (TCP_NODELAY on),
  ``Accept-Encoding: identity`` (no gzip). Latencies are from sending the request to the last
  byte of the body; median and p95 over ``--reps`` after 3 unmeasured warm-up requests. Every
  QIDO answer is counted against the population.
* Metadata, cold: the FIRST request for each of the three series, right after they were stored
  into a freshly started server that nothing had asked for metadata yet (so pacs's metadata
  cache, if any, is empty for them); the median of the three. Warm: ``--reps`` more of series 1.
  304: the same request with ``If-None-Match`` set to the ETag of the warm answer.
* WADO-RS retrieval: ``GET /studies/{study}`` of the 300-instance CT study with
  ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``, the whole body read
  and its parts counted; MB/s of the files' bytes. In the same run, interleaved, the same 300 files
  are read from disk (open + read whole, page cache warm as for the server): the ratio of the two.
* STOW-RS: the 300 CT instances with new Study/Series/SOP Instance UIDs (a new study per
  repetition, so the server really stores them), 6 POSTs of 50 instances
  (``multipart/related; type="application/dicom"``) on one connection; instances/s.
* QIDO throughput: 8 threads, each with its own keep-alive connection, cycle through the study
  and series QIDO queries above (not the 600-instance one, which would dominate the mix) for
  ``--throughput-seconds``; completed queries/s.
* Query auditing (pacs only): after the rows above, a second ``pacs serve`` is started on the
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import (
    CACHE_DIR,
    DEFAULT_POSTGRES,
    REPO,
    RESULTS_DIR,
    Corpus,
    Shape,
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
THREADS = 8
NOT_THERE = (404, 405, 501)  # an endpoint that has not landed yet: "n/a", not a failure

# the targets
GOAL_EXACT_MS = 10.0
GOAL_WILDCARD_MS = 30.0
GOAL_META_COLD_MS = 300.0
GOAL_META_WARM_MS = 30.0
GOAL_304_MS = 5.0
GOAL_WADO_VS_RAW = 0.5
GOAL_STOW_VS_ORTHANC = 1.0

QIDO_JSON = {"Accept": "application/dicom+json"}
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


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
    """One figure of one target: samples (ms, or a rate), or why there is none."""

    samples: list[float] = field(default_factory=list)
    missing: str | None = None  # not implemented by the server (n/a)
    error: str | None = None  # a failed run
    count: int | None = None  # matches / parts / instances, as checked
    extra: dict[str, float] = field(default_factory=dict)

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
    goal: str = ""

    @property
    def lower_is_better(self) -> bool:
        return self.unit == "ms"


ROWS = (
    Row("qido_pid", "QIDO /studies?PatientID= (exact)", "ms", f"< {GOAL_EXACT_MS:g} ms"),
    Row("qido_name", "QIDO /studies?PatientName=smi*&limit=100", "ms",
        f"< {GOAL_WILDCARD_MS:g} ms"),
    Row("qido_date", "QIDO /studies?StudyDate=<1 month>&limit=100", "ms",
        f"< {GOAL_WILDCARD_MS:g} ms"),
    Row("qido_series", "QIDO /studies/{s}/series", "ms", f"< {GOAL_EXACT_MS:g} ms"),
    Row("qido_instances", "QIDO /studies/{s}/series/{se}/instances (600)", "ms"),
    Row("meta_cold", "WADO series /metadata (600), cold", "ms", f"< {GOAL_META_COLD_MS:g} ms"),
    Row("meta_warm", "WADO series /metadata (600), warm", "ms", f"< {GOAL_META_WARM_MS:g} ms"),
    Row("meta_304", "WADO series /metadata, If-None-Match -> 304", "ms", f"< {GOAL_304_MS:g} ms"),
    Row("wado_study", "WADO-RS study retrieval (300 CT 512x512)", "MB/s"),
    Row("raw_read", "raw read of the same 300 files", "MB/s"),
    Row("stow", "STOW-RS 300 CT in POSTs of 50", "inst/s",
        f"≥ {GOAL_STOW_VS_ORTHANC:g}x Orthanc"),
    Row("qido_tput", f"QIDO throughput, {THREADS} clients", "q/s"),
)
ROW = {r.key: r for r in ROWS}
QIDO_KEYS = ("qido_pid", "qido_name", "qido_date", "qido_series", "qido_instances")
# The throughput mix: the study and series queries. The 600-instance answer is left out: one
# of it costs Orthanc as much as hundreds of the others, so it would be all the figure measured.
TPUT_KEYS = ("qido_pid", "qido_name", "qido_date", "qido_series")
COMPARED = QIDO_KEYS + ("meta_cold", "meta_warm", "meta_304", "qido_tput")  # ≤ Orthanc


@dataclass
class Results:
    metrics: dict[tuple[str, str], Metric] = field(default_factory=dict)
    fills: dict[str, tuple[int, float]] = field(default_factory=dict)
    loads: dict[str, list[float]] = field(default_factory=dict)  # 1-min load average
    failures: list[str] = field(default_factory=list)
    # (target, "on" | "off", key) → pooled samples of the query-auditing comparison
    audit: dict[tuple[str, str, str], Metric] = field(default_factory=dict)
    audit_writer: dict[str, dict[str, float]] = field(default_factory=dict)  # target → µs

    def put(self, target: str, key: str, metric: Metric) -> Metric:
        self.metrics[(target, key)] = metric
        if metric.error:
            self.failures.append(f"{target}, {ROW[key].title}: {metric.error}")
        return metric

    def get(self, target: str, key: str) -> Metric | None:
        return self.metrics.get((target, key))


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
    if reply.status == 204 or not reply.body:
        return 0
    data = json.loads(reply.body)
    return len(data) if isinstance(data, list) else -1


def _http_problem(reply: Reply, what: str) -> tuple[str | None, str | None]:
    """(missing, error) for a non-2xx answer."""
    if 200 <= reply.status < 300:
        return None, None
    snippet = reply.body[:160].decode(errors="replace").strip()
    if reply.status in NOT_THERE:
        return f"HTTP {reply.status}", None
    return None, f"{what}: HTTP {reply.status} {snippet}"


# ----------------------------------------------------------------------------- measuring


def measure_qido(client: Client, queries: list[Query], reps: int) -> Metric:
    metric = Metric()
    wrong: list[str] = []
    for i in range(reps + 3):
        q = queries[i % len(queries)]
        reply = client.request("GET", q.path, QIDO_JSON)
        missing, error = _http_problem(reply, q.path)
        if missing or error:
            metric.missing, metric.error = missing, error
            metric.samples.clear()
            return metric
        got = _json_count(reply)
        if got != q.expected:
            wrong.append(f"{q.path}: {got} answers, expected {q.expected}")
        if i >= 3:
            metric.samples.append(reply.ms)
            metric.count = got
    if wrong:
        metric.error = f"wrong answer in {len(wrong)} of {reps + 3} requests, e.g. {wrong[0]}"
    return metric


def metadata_path(study: str, series: str) -> str:
    return f"/dicom-web/studies/{study}/series/{series}/metadata"


def measure_meta_cold(client: Client, real: RealSeries) -> Metric:
    """The first metadata request of each stored series: the median of those."""
    metric = Metric()
    for study, series in zip(real.studies, real.series, strict=True):
        reply = client.request("GET", metadata_path(study, series), QIDO_JSON)
        missing, error = _http_problem(reply, "metadata")
        if missing or error:
            metric.missing, metric.error = missing, error
            metric.samples.clear()
            return metric
        got = _json_count(reply)
        if got != SERIES_LAYOUT[3]:
            metric.error = f"metadata: {got} instances, expected {SERIES_LAYOUT[3]}"
        metric.samples.append(reply.ms)
        metric.count = got
    return metric


def measure_meta_warm(client: Client, real: RealSeries, reps: int) -> tuple[Metric, Metric]:
    """Warm metadata of series 1, then If-None-Match with its ETag (expects 304)."""
    path = metadata_path(real.studies[0], real.series[0])
    warm = Metric()
    etag = None
    for i in range(reps + 3):
        reply = client.request("GET", path, QIDO_JSON)
        missing, error = _http_problem(reply, "metadata")
        if missing or error:
            warm.missing, warm.error = missing, error
            warm.samples.clear()
            return warm, Metric(missing=missing or "metadata failed")
        if i == 0:
            got = _json_count(reply)
            warm.count = got
            if got != SERIES_LAYOUT[3]:
                warm.error = f"metadata: {got} instances, expected {SERIES_LAYOUT[3]}"
        etag = reply.headers.get("ETag")
        if i >= 3:
            warm.samples.append(reply.ms)
    not_modified = Metric()
    if not etag:
        not_modified.missing = "no ETag"
        return warm, not_modified
    headers = {**QIDO_JSON, "If-None-Match": etag}
    for i in range(reps + 3):
        reply = client.request("GET", path, headers)
        if reply.status != 304:
            missing, error = _http_problem(reply, "metadata If-None-Match")
            not_modified.missing = missing or error or f"HTTP {reply.status}, not 304"
            not_modified.samples.clear()
            return warm, not_modified
        if i >= 3:
            not_modified.samples.append(reply.ms)
    return warm, not_modified


def read_files(corpus: Corpus) -> float:
    """Seconds to open and read every file of `corpus` whole (1 MB reads, like the client)."""
    start = time.perf_counter()
    for name in corpus.files:
        with open(corpus.root / name, "rb", buffering=0) as fh:
            while fh.read(1 << 20):
                pass
    return time.perf_counter() - start


def measure_wado(
    client: Client, corpus: Corpus, study: str, reps: int
) -> tuple[Metric, Metric]:
    """Study retrieval and the raw read of the same files, interleaved; MB/s of file bytes."""
    wado, raw = Metric(), Metric()
    mb = corpus.nbytes / 1e6
    path = f"/dicom-web/studies/{study}"
    n = len(corpus.files)
    for i in range(reps + 1):
        reply = client.request("GET", path, {"Accept": WADO_ACCEPT}, stream=True,
                               count_parts=True)
        if not 200 <= reply.status < 300:
            missing, error = _http_problem(reply, "study retrieval")
            wado.missing, wado.error = missing, error
            wado.samples.clear()
            break
        if reply.parts != n:
            wado.error = f"study retrieval: {reply.parts} parts, expected {n}"
        wado.count = reply.parts
        wado.extra["body_mb"] = reply.nbytes / 1e6
        if i >= 1:  # the first one warms up
            wado.samples.append(mb / (reply.ms / 1000))
    for i in range(reps + 1):
        seconds = read_files(corpus)
        if i >= 1:
            raw.samples.append(mb / seconds)
    raw.count = n
    return wado, raw


def stow_bodies(corpus: Corpus, tag: str) -> tuple[str, list[bytes]]:
    """The corpus with new Study/Series/SOP Instance UIDs (`tag` makes them unique), as
    multipart/related bodies of STOW_BATCH instances; returns (boundary, bodies)."""
    import pydicom

    boundary = f"pacsbench{tag.replace('.', 'x')}"
    study = f"{UID_ROOT}9.{tag}"
    series: dict[str, str] = {}
    bodies: list[bytes] = []
    buf = io.BytesIO()
    for i, name in enumerate(corpus.files):
        ds = pydicom.dcmread(corpus.root / name)
        ds.StudyInstanceUID = study
        old = str(ds.SeriesInstanceUID)
        ds.SeriesInstanceUID = series.setdefault(old, f"{study}.{len(series) + 1}")
        uid = f"{study}.0.{i + 1}"
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        part = io.BytesIO()
        ds.save_as(part, enforce_file_format=True)
        buf.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        buf.write(part.getvalue())
        buf.write(b"\r\n")
        if (i + 1) % STOW_BATCH == 0 or i + 1 == len(corpus.files):
            buf.write(f"--{boundary}--\r\n".encode())
            bodies.append(buf.getvalue())
            buf = io.BytesIO()
    return boundary, bodies


def measure_stow(client: Client, corpus: Corpus, reps: int, target_tag: str) -> Metric:
    metric = Metric()
    n = len(corpus.files)
    for rep in range(reps):
        boundary, bodies = stow_bodies(corpus, f"{target_tag}.{os.getpid()}.{rep + 1}")
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        stored = 0
        total_ms = 0.0
        for body in bodies:
            reply = client.request("POST", "/dicom-web/studies", headers, body)
            if reply.status not in (200, 202):
                missing, error = _http_problem(reply, "STOW-RS")
                metric.missing = missing
                metric.error = error or f"STOW-RS: HTTP {reply.status}"
                metric.samples.clear()
                return metric
            total_ms += reply.ms
            stored += _stow_count(reply)
        if stored != n:
            metric.error = f"STOW-RS: {stored} instances acknowledged, {n} sent"
        metric.samples.append(n / (total_ms / 1000))
        metric.count = stored
    return metric


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


def measure_throughput(port: int, queries: list[Query], seconds: float) -> Metric:
    """THREADS threads, each its own keep-alive connection, cycling through `queries`."""
    metric = Metric()
    if not queries:
        metric.missing = "no QIDO query available"
        return metric
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
        metric.error = f"throughput: {errors[0]}"
        return metric
    metric.samples.append(sum(counts) / elapsed)
    metric.count = sum(counts)
    return metric


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


# ---------------------------------------------------------------------------------- runs


@dataclass
class Data:
    studies: list[StudySpec]
    real: RealSeries
    move: Corpus
    move_study: str
    extra: list[tuple[str, str, str]]


def store(corpus: Corpus, port: int, aet: str, work: Path, what: str) -> float:
    profile = write_storescu_profile(corpus.contexts, work / f"storescu-{what}.cfg")
    outcome = send(corpus, profile, port, aet, Shape(what, corpus.size, 1), work)
    if outcome.error:
        raise RuntimeError(f"storing {what} failed: {outcome.error}")
    return outcome.seconds


def measure_target(
    res: Results, target: str, http_port: int, dicom_port: int, aet: str, data: Data,
    args: argparse.Namespace, work: Path,
) -> None:
    """Store the real data into the running server, then every measurement, in this order."""
    log(f"  {target}: storing 3 x 600-instance series and the 300-instance CT study (storescu)")
    seconds = store(data.real.corpus, dicom_port, aet, work, "series600")
    log(f"    series: {len(data.real.corpus.files)} in {seconds:.1f} s")
    seconds = store(data.move, dicom_port, aet, work, "ct300")
    log(f"    CT study: {len(data.move.files)} in {seconds:.1f} s")
    res.loads[target] = [os.getloadavg()[0]]
    client = Client(http_port)
    try:
        # cold first: nothing has asked for these series' metadata yet
        _logged(res, target, "meta_cold", measure_meta_cold(client, data.real))
        queries = qido_queries(data.studies, data.real, data.extra)
        for key in QIDO_KEYS:
            _logged(res, target, key, measure_qido(client, queries[key], args.reps))
        warm, not_modified = measure_meta_warm(client, data.real, args.reps)
        _logged(res, target, "meta_warm", warm)
        _logged(res, target, "meta_304", not_modified)
        wado, raw = measure_wado(client, data.move, data.move_study, args.wado_reps)
        _logged(res, target, "wado_study", wado)
        _logged(res, target, "raw_read", raw)
        if args.stow_reps > 0:
            tag = {"pacs-sqlite": "1", "pacs-postgres": "2", "orthanc": "3"}.get(target, "4")
            _logged(res, target, "stow", measure_stow(client, data.move, args.stow_reps, tag))
    finally:
        client.close()
    if args.throughput_seconds > 0:
        available = [q for key in TPUT_KEYS
                     if (m := res.get(target, key)) is not None and m.samples
                     for q in queries[key]]
        _logged(res, target, "qido_tput",
                measure_throughput(http_port, available, args.throughput_seconds))
    res.loads[target].append(os.getloadavg()[0])


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
                    got = measure_throughput(servers[state].http_port, mix,
                                             args.throughput_seconds)
                    pooled = res.audit.setdefault((target, state, "qido_tput"), Metric())
                    pooled.samples += got.samples
                    pooled.error = pooled.error or got.error
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


def _logged(res: Results, target: str, key: str, metric: Metric) -> None:
    res.put(target, key, metric)
    row = ROW[key]
    if metric.missing and not metric.samples:
        text = f"n/a ({metric.missing})"
    elif row.unit == "ms" and len(metric.samples) > 3:
        text = f"median {_num(metric.median)} ms, p95 {_num(metric.p95)} ms"
    else:
        text = f"{_num(metric.median)} {row.unit}"
    if metric.count is not None:
        text += f" ({metric.count})"
    if metric.error:
        text += f" ERROR {metric.error}"
    log(f"    {row.title:48s} {text}")


def run_pacs(
    res: Results, backend: str, data: Data, args: argparse.Namespace, root: Path,
    command: list[str], postgres: str,
) -> None:
    target = f"pacs-{backend}"
    work = root / target
    work.mkdir(parents=True)
    data_dir = work / "data"
    server: WebPacs | None = None
    try:
        with _database(backend, postgres, data_dir) as url:
            log(f"{target}: filling the index with {len(data.studies) * 10:,} instances")
            seconds = fill_pacs(url, data_dir, data.studies)
            res.fills[target] = (len(data.studies) * INSTANCES_PER_STUDY, seconds)
            log(f"  filled in {seconds:.1f} s")
            server = WebPacs(command, work, data_dir, url, 0)
            server.start()
            measure_target(res, target, server.http_port, server.port, server.aet, data, args,
                           work)
            if args.audit_rounds > 0:
                log(f"  {target}: QIDO-RS with query auditing off and on, "
                    f"{args.audit_rounds} x {args.reps} requests each")
                measure_audit_cost(res, target, server, data, args)
                server.stop()  # the writer measured alone on the same index
                res.audit_writer[target] = audit_writer_cost(url)
    except Exception as exc:
        res.failures.append(f"{target}: {type(exc).__name__}: {exc}")
        log(f"{target} FAILED: {type(exc).__name__}: {exc}")
        if server is not None:
            tail = server.log_tail()
            if tail:
                log("  last lines of the pacs log:\n" + _indent(tail))
    finally:
        if server is not None:
            server.stop()


def run_orthanc(
    res: Results, binary: str, plugin: str, data: Data, args: argparse.Namespace, root: Path,
) -> None:
    target = "orthanc"
    work = root / target
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
        res.fills[target] = (count, seconds)
        log(f"  filled in {seconds:.1f} s")
        orthanc.stop()  # a fresh process for the measurement, like pacs
        orthanc.start()
        measure_target(res, target, orthanc.http_port, orthanc.dicom_port, orthanc.aet, data,
                       args, work)
    except Exception as exc:
        res.failures.append(f"{target}: {type(exc).__name__}: {exc}")
        log(f"{target} FAILED: {type(exc).__name__}: {exc}\n" + _indent(orthanc.log_tail()))
    finally:
        orthanc.stop()


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


def _value(res: Results, target: str, key: str) -> float | None:
    m = res.get(target, key)
    return m.median if m is not None else None


def _ratio(res: Results, target: str, key: str) -> float | None:
    """pacs / Orthanc: a time ratio for ms rows (≤ 1 is as fast), a rate ratio otherwise."""
    a, b = _value(res, target, key), _value(res, "orthanc", key)
    return a / b if a is not None and b else None


def _wado_vs_raw(res: Results, target: str) -> float | None:
    a, b = _value(res, target, "wado_study"), _value(res, target, "raw_read")
    return a / b if a is not None and b else None


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
    out += ["", "## Results (ms rows: median / p95, QIDO answers in brackets)", "",
            head + " |", rule]
    for row in ROWS:
        unit = "ms" if row.unit == "ms" else row.unit
        cells = [_cell(res, t, row.key) for t in targets]
        if orthanc:
            cells += [_num(_ratio(res, t, row.key), 2) if row.key != "raw_read" else ""
                      for t in pacs]
        out.append(f"| {row.title} | {unit} | " + " | ".join(cells) + " |")
    cells = [_num(_wado_vs_raw(res, t), 2) for t in targets]
    if orthanc:
        cells += [""] * len(pacs)
    out.append("| WADO-RS retrieval / raw read | ratio | " + " | ".join(cells) + " |")
    out += ["", "Ratios pacs / Orthanc: of medians; for ms rows ≤ 1 means pacs is at least as "
            "fast, for rates (MB/s, inst/s, q/s) ≥ 1 does."]
    out += _goals(res, pacs, orthanc)
    out += _audit_table(res, pacs)
    out += ["", "## Fill, and the machine's load", "",
            "| target | instances | fill seconds | instances/s | 1-min load average before / "
            "after the measurements |", "|---|---:|---:|---:|---|"]
    for t, (n, s) in res.fills.items():
        loads = " / ".join(f"{v:.1f}" for v in res.loads.get(t, []))
        out.append(f"| {t} | {n:,} | {s:.1f} | {n / s:.0f} | {loads or 'n/a'} |")
    out += ["", f"A load average above the {os.cpu_count()} CPUs means other work shared the "
            "machine during the run: compare ratios of one run, not absolute figures."]
    if res.failures:
        out += ["", "## Failed runs", ""] + [f"- {f}" for f in res.failures]
    return "\n".join(out) + "\n"


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


def _goals(res: Results, pacs: Sequence[str], orthanc: bool) -> list[str]:
    out = ["", "## The issue's targets", "", "| target | goal | measured | verdict |",
           "|---|---|---|---|"]
    absolute = (
        ("qido_pid", GOAL_EXACT_MS), ("qido_series", GOAL_EXACT_MS),
        ("qido_name", GOAL_WILDCARD_MS), ("qido_date", GOAL_WILDCARD_MS),
        ("meta_cold", GOAL_META_COLD_MS), ("meta_warm", GOAL_META_WARM_MS),
        ("meta_304", GOAL_304_MS),
    )
    for t in pacs:
        for key, goal in absolute:
            m = _value(res, t, key)
            measured = "n/a" if m is None else f"{m:.1f} ms"
            out.append(f"| {t}: {ROW[key].title} median | < {goal:g} ms | {measured} | "
                       f"{_verdict(None if m is None else m < goal)} |")
        r = _wado_vs_raw(res, t)
        out.append(f"| {t}: WADO-RS study retrieval / raw read | ≥ {GOAL_WADO_VS_RAW:g} | "
                   f"{_num(r, 2)} | {_verdict(None if r is None else r >= GOAL_WADO_VS_RAW)} |")
        if orthanc:
            r = _ratio(res, t, "stow")
            out.append(f"| {t}: STOW-RS vs Orthanc (rate ratio) | ≥ {GOAL_STOW_VS_ORTHANC:g} | "
                       f"{_num(r, 2)} | "
                       f"{_verdict(None if r is None else r >= GOAL_STOW_VS_ORTHANC)} |")
            for key in COMPARED:
                r = _ratio(res, t, key)
                lower = ROW[key].lower_is_better
                goal = "≤ 1 (time)" if lower else "≥ 1 (rate)"
                ok = None if r is None else (r <= 1 if lower else r >= 1)
                out.append(f"| {t}: {ROW[key].title} vs Orthanc | {goal} | {_num(r, 2)} | "
                           f"{_verdict(ok)} |")
    return out


def _environment(args: argparse.Namespace, orthanc_binary: str | None, plugin: str | None,
                 data: Data) -> dict[str, str]:
    ns = argparse.Namespace(reps=args.reps, all_reps=0, findscu_reps=0,
                            retrieve_reps=args.wado_reps)
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
    meta["client"] = (
        "http.client, one keep-alive connection (TCP_NODELAY), Accept-Encoding identity; "
        f"{args.reps} reps per latency after 3 warm-up, rotating over 20 patients / studies "
        "for PatientID and series-in-study; time = request sent to last body byte"
    )
    meta["cold metadata"] = (
        "first request for each of the 3 series, right after storing them into a freshly "
        "started server (nothing had asked for their metadata); median of 3"
    )
    meta["WADO-RS retrieval"] = (
        f"GET /studies/{{s}} Accept {WADO_ACCEPT}; 1 warm-up + {args.wado_reps} runs, each "
        "interleaved with a raw read of the 300 files (1 MB reads, page cache warm); MB/s of "
        "file bytes"
    )
    meta["STOW-RS"] = (
        f"the 300 CT files with new UIDs (a new study per run), {300 // STOW_BATCH} POSTs of "
        f"{STOW_BATCH} on one connection; {args.stow_reps} runs, median"
    )
    meta["QIDO throughput"] = (
        f"{THREADS} threads x own keep-alive connection for {args.throughput_seconds:g} s, "
        "cycling through the study and series QIDO requests (PatientID, smi*, month, "
        "series in study; not the 600-instance one) that the server answers"
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
    ap.add_argument("--reps", type=int, default=50, help="measured reps per latency (50)")
    ap.add_argument("--wado-reps", type=int, default=5, help="study retrievals (5)")
    ap.add_argument("--stow-reps", type=int, default=3,
                    help="STOW-RS runs of 300 instances (3; 0 skips)")
    ap.add_argument("--throughput-seconds", type=float, default=10.0,
                    help="duration of the 8-client QIDO run (10; 0 skips)")
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
    if args.reps < 1 or args.wado_reps < 1:
        ap.error("--reps and --wado-reps must be >= 1")
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

    data = prepare(args.scale)
    res = Results()
    root = Path(tempfile.mkdtemp(prefix="pacs-dwbench-", dir=args.work_dir))
    targets = [f"pacs-{b}" for b in backends] + (["orthanc"] if orthanc_binary else [])
    try:
        for backend in backends:
            run_pacs(res, backend, data, args, root, command, postgres)
        if orthanc_binary and plugin:
            run_orthanc(res, orthanc_binary, plugin, data, args, root)
    finally:
        if args.keep:
            log(f"kept server data and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    report = render(res, targets, _environment(args, orthanc_binary, plugin, data))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamped = RESULTS_DIR / f"dicomweb-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    stamped.write_text(report, encoding="utf-8")
    args.output.write_text(report, encoding="utf-8")
    log("")
    log(report)
    log(f"written to {_rel(args.output)} and {_rel(stamped)}")
    return 1 if res.failures else 0


def prepare(scale: int) -> Data:
    studies = population(scale // INSTANCES_PER_STUDY)
    real = ensure_series_corpus()
    move = ensure_move_corpus()
    for corpus in (real.corpus, move):  # warm the page cache: no target pays for cold reads
        for name in corpus.files:
            (corpus.root / name).read_bytes()
    extra = [*real.headers, _extra_headers(move)]
    return Data(studies, real, move, move_study_uid(move), extra)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
