"""Metrics in the Prometheus text format (``GET /metrics``), counted in every process of a
run: the listening one and its DIMSE worker processes.

prometheus-client's multiprocess mode keeps each process's values in memory-mapped files of
its own in one folder (``PROMETHEUS_MULTIPROC_DIR``), which a scrape reads and adds up. ``pacs
serve`` makes a fresh folder for each run (:func:`run_directory`), its workers find it in
their environment, and it is removed when the server stops: nothing needs setting. A count
costs a dictionary look-up and a write to the process's own mapped file (no lock shared by
processes, no system call).

Metrics are per process by nature (the file a process writes), so the recorder is this
module, switched on by the composition root (:func:`enable`) before anything is counted;
until then each recording function returns at once (the CLI's commands, in-process tests).
What the index holds (the QA queue, routing jobs by state) is read when scraped
(:class:`Scrape`), in the listening process only.

Label values are closed sets: protocols, outcomes, DICOM status codes, DIMSE services, HTTP
methods and status codes, route templates (``/dicom-web/studies/{study}/series``), kinds of
error: never a UID, a name, a path or anything else a peer sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs.services.bounded import BoundedCall, TimedOut
from pacs.services.workflow.states import StudyState
from storage.index import Index

log = logging.getLogger(__name__)

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format."""

FAILED = "failed"
"""The outcome of a store that did not succeed (the others: ``StoreStatus`` values)."""


class _Metrics:
    """The metric objects, made once the multiprocess folder is set."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.stores = Counter(
            "pacs_stores", "Instances received for storage, by protocol (dimse, dicomweb, "
            "import), outcome (stored, already_present, replaced, failed) and DICOM status "
            "(0000 success; a C-STORE status or a STOW-RS Failure Reason)",
            ["protocol", "outcome", "status"], registry=None)
        self.store_seconds = Histogram(
            "pacs_store_duration_seconds", "Seconds from a whole instance received to its "
            "outcome (durable, or refused); a STOW-RS request's instances are stored together "
            "and each counts the batch's time", ["protocol"], registry=None)
        self.associations = Gauge(
            "pacs_dimse_associations_open", "DIMSE associations established and not yet closed",
            registry=None, multiprocess_mode="livesum")
        self.associations_total = Counter(
            "pacs_dimse_associations", "DIMSE associations established", registry=None)
        self.dimse_seconds = Histogram(
            "pacs_dimse_request_duration_seconds", "Seconds to serve a DIMSE request, from "
            "the request to its final response (C-MOVE and C-GET: every sub-operation)",
            ["service"], registry=None)
        self.http_requests = Counter(
            "pacs_http_requests", "HTTP requests answered, by method, route template and "
            "status code", ["method", "route", "code"], registry=None)
        self.http_seconds = Histogram(
            "pacs_http_request_duration_seconds", "Seconds to answer an HTTP request, "
            "its body sent, by method and route template", ["method", "route"], registry=None)
        self.index_errors = Counter(
            "pacs_index_errors", "Index database errors, by kind (unavailable, refused, "
            "stale_connection, pool_timeout)", ["kind"], registry=None)
        self.blob_errors = Counter(
            "pacs_blob_store_errors", "Blob store errors, by operation (write, sync, read)",
            ["operation"], registry=None)


_metrics: _Metrics | None = None


def enable(directory: Path) -> None:
    """Count into ``directory`` from now on (this process, and the processes it starts after
    this: the folder is in their environment)."""
    global _metrics
    os.environ[ENVIRONMENT] = str(directory)
    from prometheus_client import values

    # prometheus-client chooses how values are kept when it is first imported; a process
    # that imported it before the folder was set (the listening one) switches now, before
    # any value is made. (A worker started with the folder set chose it already.)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _metrics = _Metrics()


def enable_from_environment() -> bool:
    """:func:`enable` with the folder the process's parent set (a DIMSE worker); False when
    none was set."""
    directory = os.environ.get(ENVIRONMENT)
    if not directory or not Path(directory).is_dir():
        return False
    enable(Path(directory))
    return True


_PREFIX = "pacs-metrics-"


@contextmanager
def run_directory() -> Iterator[Path]:
    """A fresh folder for this run's metric files, removed afterwards. It is made in the
    system's temporary folder, a local one (mapped files want a local file system), named
    after the process; the folders of runs whose process is gone (killed) go first."""
    parent = Path(tempfile.gettempdir())
    for left in parent.glob(f"{_PREFIX}*-*"):
        pid = left.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# -- recording (each a no-op until enabled) ---------------------------------------------------
def store(protocol: str, outcome: str, status: int, seconds: float) -> None:
    """One instance's store: ``outcome`` a ``StoreStatus`` value or :data:`FAILED`, ``status``
    the DICOM status answered (0 for success)."""
    metrics = _metrics
    if metrics is not None:
        metrics.stores.labels(protocol, outcome, f"{status:04X}").inc()
        metrics.store_seconds.labels(protocol).observe(seconds)


def association_opened() -> None:
    metrics = _metrics
    if metrics is not None:
        metrics.associations.inc()
        metrics.associations_total.inc()


def association_closed() -> None:
    metrics = _metrics
    if metrics is not None:
        metrics.associations.dec()


def dimse_request(service: str, seconds: float) -> None:
    """A C-FIND, C-MOVE or C-GET served."""
    metrics = _metrics
    if metrics is not None:
        metrics.dimse_seconds.labels(service).observe(seconds)


def http_request(method: str, route: str, code: int, seconds: float) -> None:
    """An HTTP request answered: ``route`` its template, never the path it was sent to."""
    metrics = _metrics
    if metrics is not None:
        metrics.http_requests.labels(method, route, str(code)).inc()
        metrics.http_seconds.labels(method, route).observe(seconds)


def index_error(kind: str) -> None:
    """``storage.index.Index.watch_errors``'s callback."""
    metrics = _metrics
    if metrics is not None:
        metrics.index_errors.labels(kind).inc()


def blob_error(operation: str) -> None:
    """A blob store operation failed: ``write`` (staging or placing a blob), ``sync`` (making
    it durable), ``read`` (a stored blob missing, or an object store that cannot be reached)."""
    metrics = _metrics
    if metrics is not None:
        metrics.blob_errors.labels(operation).inc()


# -- scraping ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexGauges:
    """What the index holds, read when scraped."""

    qa_queue: int  # studies quarantined, waiting for a QA decision
    jobs: dict[str, int]  # routing jobs by state


def read_index_gauges(index: Index) -> IndexGauges:
    with index.unit_of_work() as repository:
        gauges = repository.gauges
        return IndexGauges(qa_queue=gauges.studies_in_state(StudyState.QUARANTINED.value),
                           jobs=gauges.jobs_by_state())


class Scrape:
    """The text a scrape gets: every process's files added up, and the index's gauges, read
    within ``timeout`` (left out when the index does not answer in time: the scrape itself
    still answers, and ``pacs_index_errors_total`` or the readiness probe say why).

    ``live_pids()``: the processes of this run still alive (this one and its workers): the
    "live" gauges of a process that is gone (associations it had open) are dropped."""

    def __init__(self, directory: Path, *, index: Index, live_pids: Callable[[], set[int]],
                 timeout: float = 2.0) -> None:
        self.directory = directory
        self.live_pids = live_pids
        self._gauges = BoundedCall("metrics-index", lambda: read_index_gauges(index), timeout)

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self._forget_gone()
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        registry.register(_IndexCollector(self._read_gauges))
        return generate_latest(registry)

    def _read_gauges(self) -> IndexGauges | None:
        try:
            return self._gauges()
        except TimedOut:
            log.warning("metrics: the index did not answer in time; its gauges are left out")
        except Exception as error:  # noqa: BLE001 (the scrape answers without them)
            log.warning("metrics: the index gauges cannot be read: %s", error)
        return None

    def _forget_gone(self) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        live = self.live_pids()
        for path in self.directory.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and int(pid) not in live:
                mark_process_dead(int(pid), str(self.directory))  # type: ignore[no-untyped-call]


class _IndexCollector:
    """A prometheus-client collector of :class:`IndexGauges`."""

    def __init__(self, read: Callable[[], IndexGauges | None]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gauges = self.read()
        if gauges is None:
            return []
        queue = GaugeMetricFamily("pacs_qa_queue_studies",
                                  "Studies quarantined, waiting for a QA decision",
                                  value=gauges.qa_queue)
        jobs = GaugeMetricFamily("pacs_routing_jobs", "Routing jobs, by state",
                                 labels=["state"])
        for state, count in sorted(gauges.jobs.items()):
            jobs.add_metric([state], count)
        return [queue, jobs]

    def describe(self) -> Iterable[Any]:
        return []
