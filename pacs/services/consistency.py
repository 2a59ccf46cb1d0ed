"""``pacs check``: compare the index with the blob store, and repair what can be repaired;
and the orphan sweep ``pacs serve`` runs at start.

A blob without an index row (an *orphan*) is what a crash leaves between a store's rename of
its blob into place and its index commit (the commit never happened, so the store was never
acknowledged). A file a correction replaced stays referenced (a retired file record) until the
purge, and is no orphan.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from pacs.services.blob_errors import blob_store_errors
from pacs.services.changes import record_deleted_instances
from storage.blob_store import BlobNotFound, BlobStore
from storage.index import Index

log = logging.getLogger(__name__)

_BATCH = 500  # keys looked up per index query: bounded memory, few round trips
# rows checked at start for a blob lost by a crash: more than the stores ever under way at once
UNSYNCED_WINDOW = 512


@dataclass(frozen=True)
class Mismatch:
    sop_instance_uid: str
    blob_key: str
    expected_size: int
    actual_size: int
    expected_sha256: str
    actual_sha256: str


@dataclass
class ConsistencyReport:
    instances: int = 0
    blobs: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, key)
    orphans: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    partial_files: int = 0
    repaired_rows: int = 0
    repaired_orphans: int = 0

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.orphans or self.mismatched)


class ConsistencyService:
    def __init__(self, *, blobs: BlobStore, index: Index) -> None:
        self.blobs = blobs
        self.index = index

    @blob_store_errors()
    def check(
        self, *, verify_hashes: bool = True, repair: bool = False, orphan_grace_s: float = 120.0
    ) -> ConsistencyReport:
        """Missing files, orphan files, size/SHA-256 mismatches; ``repair`` removes orphans and
        index rows whose files are gone (a mismatched file is reported, never deleted).

        An orphan younger than ``orphan_grace_s`` is left alone: with a server running it may
        belong to a store whose index commit is under way.
        """
        report = ConsistencyReport()
        referenced: set[str] = set()
        with self.index.unit_of_work() as repo:
            instances = list(repo.iter_instances())
        report.instances = len(instances)
        for stored in instances:
            referenced.add(stored.blob_key)
            try:
                if verify_hashes:
                    actual = self.blobs.stat(stored.blob_key)
                    if (actual.size, actual.sha256) != (stored.blob_size, stored.blob_sha256):
                        report.mismatched.append(Mismatch(
                            stored.sop_instance_uid, stored.blob_key, stored.blob_size,
                            actual.size, stored.blob_sha256, actual.sha256,
                        ))
                elif not self.blobs.exists(stored.blob_key):
                    raise BlobNotFound(stored.blob_key)
            except BlobNotFound:
                report.missing.append((stored.sop_instance_uid, stored.blob_key))
        keys = set(self.blobs.keys())
        report.blobs = len(keys)
        report.orphans = sorted(self._unreferenced(keys - referenced))
        report.partial_files = len(self.blobs.staging.staged())
        if repair:
            self._repair(report, orphan_grace_s)
        return report

    def recover_unsynced(self, *, since: dt.datetime, newest: int = UNSYNCED_WINDOW) -> int:
        """After a crash: remove the rows, among the ``newest`` received since ``since`` (the
        crashed run's start), whose blob is missing or not whole; returns how many.

        A store commits its index row, then waits for the one sync that makes the blob and the
        row durable, then answers (:mod:`pacs.services.ingest`). A crash during that wait may
        leave the row on disk without its blob (the disk wrote them in its own order); that
        store was never acknowledged, so the row goes, and the peer's retry stores it again.
        Only stores under way at the crash can be affected, and every store waits for a sync
        that started after its commit: a window of the newest rows as wide as the most stores
        ever under way at once covers them. Rows from before the crashed run are never touched
        (a blob missing there is not a crash's doing: ``pacs check`` reports it). ``pacs serve``
        runs this at start when its last run did not stop (:class:`RunRecord`), before it
        listens and before the orphan sweep (which then removes a partial blob)."""
        started = time.monotonic()
        with self.index.unit_of_work() as repo:
            candidates = repo.newest_instances(newest, since=since)
        broken: list[str] = []
        for stored in candidates:
            try:
                actual = self.blobs.stat(stored.blob_key)
            except BlobNotFound:
                actual = None
            if actual is None or (actual.size, actual.sha256) != (
                stored.blob_size, stored.blob_sha256
            ):
                log.warning("removed the index row of instance %s: its file %s did not survive "
                            "a crash before the store was acknowledged", stored.sop_instance_uid,
                            stored.blob_key)
                broken.append(stored.sop_instance_uid)
        if broken:
            with self.index.unit_of_work(write=True) as repo:
                record_deleted_instances(repo, broken)
                repo.delete_instances(broken)
        log.info("unsynced rows: the newest %d checked, %d removed in %.1f s", len(candidates),
                 len(broken), time.monotonic() - started)
        return len(broken)

    @blob_store_errors()
    def sweep_orphans(self, *, grace_s: float = 0.0) -> int:
        """Delete orphan blobs older than ``grace_s`` seconds; returns how many.

        ``pacs serve`` runs this at start, before its listeners accept anything: no store of
        this server can be under way then, so on a single node every orphan is a crash's
        leftover and a grace of 0 is safe. A store shared by several servers needs a grace
        longer than a store takes (another server's blob may be renamed but not committed).
        The store is walked once and the index asked in batches of ``_BATCH`` keys, so memory
        stays bounded and time grows with the number of blobs only (no hashing)."""
        started = time.monotonic()
        removed = scanned = 0
        keys = self.blobs.keys()
        while chunk := list(islice(keys, _BATCH)):
            scanned += len(chunk)
            for key in self._unreferenced(chunk):
                try:
                    if self.blobs.age(key) < grace_s:
                        continue
                except BlobNotFound:
                    continue
                self.blobs.delete(key)
                log.warning("removed orphan blob %s (no index row refers to it)", key)
                removed += 1
        log.info("orphan sweep: %d blobs checked, %d orphans removed in %.1f s", scanned,
                 removed, time.monotonic() - started)
        return removed

    def _unreferenced(self, keys: Collection[str]) -> list[str]:
        """The keys of ``keys`` no instance or retired file record refers to."""
        found: list[str] = []
        ordered = list(keys)
        for start in range(0, len(ordered), _BATCH):
            chunk = ordered[start : start + _BATCH]
            with self.index.unit_of_work() as repo:
                used = repo.studies.blobs_in_use(chunk)
            found += [key for key in chunk if key not in used]
        return found

    def _repair(self, report: ConsistencyReport, orphan_grace_s: float) -> None:
        if report.missing:
            with self.index.unit_of_work(write=True) as repo:
                record_deleted_instances(repo, [uid for uid, _ in report.missing])
                report.repaired_rows = repo.delete_instances([uid for uid, _ in report.missing])
        for key in report.orphans:
            # An orphan may have become referenced since the scan (a store in progress).
            if self.blobs.age(key) < orphan_grace_s:
                continue
            with self.index.unit_of_work() as repo:
                if repo.blob_referenced(key):
                    continue
            self.blobs.delete(key)
            report.repaired_orphans += 1


class AlreadyRunning(RuntimeError):
    """Another ``pacs serve`` holds this SQLite index."""


class RunRecord:
    """``<database>-serve.lock`` beside a SQLite index: held (``flock``) by the one ``pacs
    serve`` of that index while it runs, and holding that run's start time until it stops.

    A second server on the same index is refused (SQLite is one server's database: several
    servers share PostgreSQL). A start that finds a start time there learns that the last run
    ended without stopping (kill -9, a power loss) and when it began: what
    :meth:`ConsistencyService.recover_unsynced` needs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def claim(self) -> dt.datetime | None:
        """Take the record; returns the start of the last run if it did not stop. Raises
        :class:`AlreadyRunning` if another server holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another pacs serve is running on this SQLite index (it holds {self.path}); "
                "one server per SQLite index: run several on PostgreSQL"
            ) from None
        self._fd = fd
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        return _crashed_run(text)

    def begin(self) -> None:
        """Record this run's start, durably, before anything is received."""
        assert self._fd is not None, "claim() first"
        started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # clocks step; be generous
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, started.isoformat().encode("ascii"), 0)
        os.fsync(self._fd)
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def end(self) -> None:
        """A clean stop: nothing to recover at the next start."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        finally:
            os.close(self._fd)  # (releases the lock)
            self._fd = None


def _crashed_run(text: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        started = dt.datetime.fromisoformat(text)
    except ValueError:
        log.warning("the record of the last run is not a time (%r): no rows checked", text)
        return None
    return started if started.tzinfo is not None else started.replace(tzinfo=dt.UTC)
