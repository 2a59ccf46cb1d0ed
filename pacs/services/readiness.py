"""Readiness (``GET /readyz``): whether this server can take work now.

Four checks, each answered in a word: the **index** answers a query (one row of the study
table), the **blob store** takes a write (a small probe file written to this process's
staging folder and removed) and, for an object store, answers (its bucket is reachable), and
both listeners accept: **dimse** (its listening threads run, and every DIMSE worker process
is alive) and **http** (started, and not shutting down). The index and blob store checks run
in threads of their own, bounded by a timeout (:mod:`pacs.services.bounded`): a database that
stops answering makes the probe say ``timeout``, it never hangs it.

What failed is told by the check's name and a word (``failed``, ``timeout``, ``starting``,
``stopping``), never by the error: that is logged, with whatever path, host or statement it
names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pacs.services.bounded import BoundedCall, TimedOut
from storage.blob_store import BlobStore
from storage.index import Index

log = logging.getLogger(__name__)

PROBE = b"pacs readiness probe\n"


class Check(StrEnum):
    INDEX = "index"
    BLOB_STORE = "blob_store"
    DIMSE = "dimse"
    HTTP = "http"


class Result(StrEnum):
    OK = "ok"
    STARTING = "starting"  # a listener not open yet
    STOPPING = "stopping"  # the server is shutting down: take no new work here
    FAILED = "failed"
    TIMEOUT = "timeout"  # no answer within the probe's timeout


@dataclass(frozen=True)
class Readiness:
    checks: Mapping[Check, Result]

    @property
    def ready(self) -> bool:
        return all(result is Result.OK for result in self.checks.values())


Listeners = Callable[[], Mapping[Check, Result]]
"""The listeners' state (:data:`Check.DIMSE` and :data:`Check.HTTP`), from the composition
root, which holds them."""


class ReadinessService:
    """Runs the checks; thread-safe, and a check never runs twice at once."""

    def __init__(self, *, index: Index, blobs: BlobStore, listeners: Listeners,
                 timeout: float = 2.0) -> None:
        self.listeners = listeners
        self.timeout = timeout
        self._index = BoundedCall("index", lambda: _index_answers(index), timeout)
        self._blobs = BoundedCall("blob-store", lambda: _blob_store_writable(blobs), timeout)

    def check(self) -> Readiness:
        """Every check, the slow two at once: at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + self.timeout
        running = {Check.INDEX: (self._index, self._index.start()),
                   Check.BLOB_STORE: (self._blobs, self._blobs.start())}
        checks: dict[Check, Result] = {}
        for check, (call, future) in running.items():
            try:
                call.result(future, deadline - time.monotonic())
                checks[check] = Result.OK
            except TimedOut:
                log.warning("readiness: the %s check had no answer in %g s", check,
                            self.timeout)
                checks[check] = Result.TIMEOUT
            except Exception as error:  # noqa: BLE001 (told as "failed", the error logged)
                log.warning("readiness: the %s check failed: %s", check, error)
                checks[check] = Result.FAILED
        checks.update(self.listeners())
        return Readiness(checks)


def _index_answers(index: Index) -> None:
    with index.unit_of_work() as repository:
        repository.gauges.ping()


def _blob_store_writable(blobs: BlobStore) -> None:
    """A small file written to the staging folder (where every store begins) and removed
    again; the store itself asked whether it answers."""
    staged = blobs.staging.stage_bytes(PROBE)
    blobs.staging.discard(staged)
    blobs.check()
