"""Ingest: the one path by which an instance enters the archive (C-STORE, STOW-RS, import).

Order of a store (PS3.4 B.2.3 semantics, durability from the design):
stage the bytes → place the blob at its content address (and start its sync to disk) → read
and check the header meanwhile → upsert the index in one transaction → report success once
both the blob and the commit are durable. Where the index is SQLite on the blob store's file
system, one sync after the commit makes both durable (the commit's own sync is the store's
``syncfs``): one device flush per store, or per batch of concurrent stores, instead of two in
a row; that server is the only one of its index. Elsewhere (PostgreSQL, shared by several
servers; or an object store, whose PUT is durable when it returns) the blob is durable before
its row is committed, so no server ever sees a row whose blob a crash may lose.

If the header or the index transaction fails the new blob is deleted; if the blob cannot be
made durable the new row is deleted again: no file without a row and no row without a file is
left behind. A crash mid-store can leave an unreferenced blob, or a committed row whose blob
did not reach the disk (neither was acknowledged): the next ``pacs serve`` checks the newest
rows and sweeps orphans before it listens (:meth:`ConsistencyService.recover_unsynced`,
:meth:`ConsistencyService.sweep_orphans`).

A refusal's message is for the peer (an Error Comment, an HTTP body): it names the problem
("the index is unavailable", "no space left in the store") and never a path, host, port or
driver message; those are logged here.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, TypeVar

from pacs.services import metrics
from pacs.services.blob_errors import UNAVAILABLE
from pacs.services.changes import record_deleted_instances, record_store
from pacs.services.decoding_limits import DecodeLimits
from pacs.services.errors import (
    InvalidInstance,
    OutOfResources,
    PacsError,
    SopClassMismatch,
    StudyMismatch,
)
from pacs.services.instance_reader import Header, index_values, read_header
from pacs.services.workflow import VISIBLE_TO_VIEWERS, QaGate, StudyState, actor
from storage.blob_store import BlobStore, BlobStoreUnavailable, CommittedBlob, StagedBlob
from storage.index import (
    Index,
    IndexDataError,
    IndexNotDurable,
    IndexUnavailable,
    InstanceRow,
    Repository,
    UpsertOutcome,
    UpsertResult,
)
from storage.staging import Staging

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class StoreStatus(StrEnum):
    STORED = "stored"
    ALREADY_PRESENT = "already_present"
    REPLACED = "replaced"


@dataclass(frozen=True)
class Origin:
    """Who sent an instance: for the audit trail and the QA checks."""

    protocol: str  # "dimse", "dicomweb", "import"
    ae_title: str | None = None
    address: str | None = None
    tls_subject: str | None = None  # the subject of a TLS client certificate
    user: str | None = None  # an authenticated principal's actor (``token:NAME``)


@dataclass(frozen=True)
class Expected:
    """What the request announced: C-STORE's Affected SOP Class/Instance UID, STOW-RS's
    target study. ``None`` is not announced, so not checked."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    study_state: StudyState


class _Prepared(NamedTuple):
    """An instance staged, placed and read, not yet indexed."""

    header: Header
    row: InstanceRow
    committed: CommittedBlob


# instances per index transaction of :meth:`IngestService.store_many`: one commit and one sync
# for them all, and the SQLite writer lock never held long enough to stall a C-STORE
BATCH = 64
_NOT_YET = OutOfResources("not stored")  # (every answer is set before store_many returns)


class Incoming:
    """The bytes of one instance, however they arrived."""

    def __init__(self, stage: Callable[[Staging], StagedBlob]) -> None:
        self._stage = stage

    @classmethod
    def received_file(cls, path: Path, digest: tuple[str, int] | None = None) -> Incoming:
        """A file already in the staging folder (DIMSE chunked receive): moved.
        ``digest``: its (SHA-256, size) when the receiver hashed it while writing."""
        return cls(lambda staging: staging.stage_file(path, move=True, digest=digest))

    @classmethod
    def external_file(cls, path: Path) -> Incoming:
        """A file elsewhere (``pacs import``): copied, the original is left alone."""
        return cls(lambda staging: staging.stage_file(path, move=False))

    @classmethod
    def data(cls, data: bytes) -> Incoming:
        return cls(lambda staging: staging.stage_bytes(data))

    @classmethod
    def stream(cls, chunks: Iterable[bytes]) -> Incoming:
        return cls(lambda staging: staging.stage_stream(chunks))

    def stage(self, staging: Staging) -> StagedBlob:
        return self._stage(staging)


class IngestService:
    """Stores instances durably and indexes them. Thread-safe."""

    def __init__(
        self,
        *,
        blobs: BlobStore,
        index: Index,
        overwrite: bool = False,
        new_study_state: StudyState = StudyState.ARCHIVED,
        min_free_bytes: int = 0,
        gate: QaGate | None = None,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.blobs = blobs
        self.limits = limits  # bounds the inflating of a deflated data set
        self.index = index
        self.overwrite = overwrite
        self.min_free_bytes = min_free_bytes
        self.gate = gate
        # one sync after the commit makes the blob durable too (SQLite on the store's disk)
        self._commit_syncs_blobs = blobs.sync is not None and index.commit_sync is blobs.sync
        # the QA gate decides where new studies start (archived in auto mode, held in manual)
        self.new_study_state = gate.initial_state if gate is not None else new_study_state

    def temp_dir(self) -> Path:
        """Where a front end may let its receiver write: this process's staging folder (on
        the file system the store takes uploads from: a store of a file there is a rename)."""
        return self.blobs.staging.folder

    def store(
        self, incoming: Incoming, origin: Origin, expected: Expected | None = None
    ) -> StoreOutcome:
        """Store one instance; raises a :mod:`pacs.services.errors` error if it cannot."""
        prepared = self._prepare(incoming, origin, expected)
        key, created = prepared.row.blob.key, prepared.committed.created
        try:
            with self._unit_of_work(write=True, files_too=True) as repo:
                result, state = self._upsert(repo, prepared.row, origin)
        except OutOfResources as error:
            if created and not isinstance(error.__cause__, IndexNotDurable):
                self._remove(key)  # (a committed row keeps its blob)
            raise
        except BaseException:
            if created:
                self._remove(key)
            raise
        return self._finish(prepared, result, state)

    def store_many(
        self, incomings: Sequence[Incoming], origin: Origin, expected: Expected | None = None,
        *, workers: int = 1,
    ) -> list[StoreOutcome | Exception]:
        """Store several instances (a STOW-RS request's): read and checked by up to
        ``workers`` threads, then indexed in one transaction per :data:`BATCH` of them, each
        in a savepoint of its own, and made durable by one sync. Each succeeds or fails on its
        own: the answers in order, an exception (a :mod:`pacs.services.errors` error, or an
        unexpected one, already logged) for each refused."""
        answers: list[StoreOutcome | Exception] = []
        for start in range(0, len(incomings), BATCH):
            chunk = incomings[start : start + BATCH]
            answers += self._store_batch(chunk, origin, expected, workers)
        return answers

    def _store_batch(
        self, chunk: Sequence[Incoming], origin: Origin, expected: Expected | None, workers: int
    ) -> list[StoreOutcome | Exception]:
        def prepare(incoming: Incoming) -> _Prepared | Exception:
            try:
                return self._prepare(incoming, origin, expected, wait_durable=False)
            except PacsError as error:
                return error
            except Exception as error:  # one instance's bug must not lose the others' answers
                log.exception("unexpected failure while reading an instance")
                return error

        if workers > 1 and len(chunk) > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(chunk)),
                                    thread_name_prefix="ingest") as pool:
                prepared = list(pool.map(prepare, chunk))
        else:
            prepared = [prepare(incoming) for incoming in chunk]
        if not self._commit_syncs_blobs:  # every blob on disk before the rows: one sync or few
            for n, p in enumerate(prepared):
                if isinstance(p, _Prepared):
                    try:
                        _durable(p.committed.wait_durable, p.row.blob.key)
                    except OutOfResources as error:
                        self._delete_created([p], keep=[])
                        prepared[n] = error
        ready = [(n, p) for n, p in enumerate(prepared) if isinstance(p, _Prepared)]
        upserts: dict[int, tuple[UpsertResult, StudyState] | Exception] = {}
        try:
            try:
                upserts = self._index_batch(ready, origin, isolated=False)
            except InvalidInstance:  # the database refused a value: each in a savepoint now
                upserts = self._index_batch(ready, origin, isolated=True)
        except PacsError as error:  # the whole transaction
            kept = isinstance(error, OutOfResources) and isinstance(
                error.__cause__, IndexNotDurable
            )  # (committed rows keep their blobs)
            upserts = {n: error for n, _ in ready}
            if kept:
                ready = []
        except BaseException:
            self._delete_created([item for _, item in ready], keep=[])
            raise
        answers: list[StoreOutcome | Exception] = [
            p if isinstance(p, Exception) else _NOT_YET for p in prepared
        ]
        failed = [item for n, item in ready if isinstance(upserts[n], Exception)]
        self._delete_created(
            failed, keep=[item for n, item in ready if not isinstance(upserts[n], Exception)]
        )
        for n, entry in enumerate(prepared):
            upsert = upserts.get(n)
            if upsert is None or isinstance(entry, Exception):
                continue
            if isinstance(upsert, Exception):
                answers[n] = upsert
                continue
            try:
                answers[n] = self._finish(entry, *upsert)
            except PacsError as error:
                answers[n] = error
        return answers

    def _index_batch(
        self, ready: Sequence[tuple[int, _Prepared]], origin: Origin, *, isolated: bool
    ) -> dict[int, tuple[UpsertResult, StudyState] | Exception]:
        """One transaction for the batch. ``isolated``: each instance in a savepoint of its
        own, so that a value the database refuses fails that instance only (two more round
        trips an instance: only after a first attempt without them failed)."""
        upserts: dict[int, tuple[UpsertResult, StudyState] | Exception] = {}
        with self._unit_of_work(write=True, files_too=True) as repo:
            for n, item in ready:
                if not isolated:
                    upserts[n] = self._upsert(repo, item.row, origin)
                    continue
                try:
                    with repo.savepoint():
                        upserts[n] = self._upsert(repo, item.row, origin)
                except IndexDataError as exc:
                    log.warning("the index refused an instance's values: %s", exc)
                    upserts[n] = InvalidInstance("the index cannot hold a value of this instance")
        return upserts

    def _delete_created(self, items: Sequence[_Prepared], *, keep: Sequence[_Prepared]) -> None:
        """Delete the blobs these stores created, but one another store of the batch uses."""
        used = {item.row.blob.key for item in keep}
        for item in items:
            key = item.row.blob.key
            if item.committed.created and key not in used:
                self._remove(key)
                used.add(key)  # (the same bytes twice in one batch: deleted once)

    def _prepare(
        self, incoming: Incoming, origin: Origin, expected: Expected | None, *,
        wait_durable: bool = True,
    ) -> _Prepared:
        """Stage, place and read: everything before the index (the blob deleted again if it
        fails)."""
        staged = _guard_space(lambda: incoming.stage(self.blobs.staging))
        committed: CommittedBlob | None = None
        try:
            self._check_reserve()
            stream = staged.header_stream()
            # Placed first, so that its sync to disk runs while the header is read and checked
            # and the index commits (or is the commit's own sync, on one file system).
            # No look-up first: an identical re-send finds its blob in place (content address)
            # and the index keeps the first copy; a differing re-send's blob is deleted below.
            start_sync = not self._commit_syncs_blobs
            committed = _guard_space(lambda: self.blobs.place(staged, start_sync=start_sync))
            header = read_header(stream, staged.size, self.limits)
            if expected is not None:
                _check_expected(header, expected)
            values, requested = index_values(header)
            row = InstanceRow(
                values=values,
                request_attributes=requested,
                transfer_syntax_uid=header.transfer_syntax_uid,
                blob=staged.info,
                source_ae=origin.ae_title,
            )
            if wait_durable and not self._commit_syncs_blobs:
                # the blob is on disk before its row: a row never outruns its blob, which
                # several servers sharing the index and the store rely on
                _durable(committed.wait_durable, staged.sha256)
        except BaseException:
            if committed is not None and committed.created:
                self._remove(committed.info.key)
            raise
        finally:
            self.blobs.staging.discard(staged)
        return _Prepared(header, row, committed)

    @property
    def rows_may_outrun_blobs(self) -> bool:
        """Whether a crash can leave a committed row whose blob is not on disk: with SQLite
        on the store's file system, where one sync after the commit makes both durable (the
        store was never acknowledged; :meth:`ConsistencyService.recover_unsynced`)."""
        return self._commit_syncs_blobs

    def check_room(self, size: int) -> None:
        """Refuse ``size`` bytes that would bring the store's disk below its reserve
        (:class:`OutOfResources`): for a front end to ask before it receives a large request
        whose length it knows (a STOW-RS Content-Length), rather than filling the disk first."""
        free = self.blobs.free_bytes()
        if free - size < self.min_free_bytes:
            raise OutOfResources(
                f"no room for {size // 1_000_000} MB: {free // 1_000_000} MB free, reserve is "
                f"{self.min_free_bytes // 1_000_000} MB"
            )

    def _check_reserve(self) -> None:
        """Refuse while the store's disk is below its reserve: the index and the temporary
        files of instances being received need room too (a full disk corrupts nothing, but
        a receiver that cannot write can only abort the association)."""
        free = self.blobs.free_bytes()
        if free < self.min_free_bytes:
            raise OutOfResources(
                f"storage full: {free // 1_000_000} MB free, reserve is "
                f"{self.min_free_bytes // 1_000_000} MB"
            )

    def _upsert(
        self, repo: Repository, row: InstanceRow, origin: Origin
    ) -> tuple[UpsertResult, StudyState]:
        result = repo.upsert_instance(
            row, initial_state=self.new_study_state.value, overwrite=self.overwrite,
            visible_states=VISIBLE_TO_VIEWERS,
        )
        record_store(repo, row, result)
        state = StudyState(result.study_state)
        if self.gate is not None:
            who = actor(origin.protocol, origin.ae_title, origin.address,
                        tls_subject=origin.tls_subject, user=origin.user)
            state = self.gate.after_store(repo, row, result, who)
        return result, state

    def _finish(
        self, prepared: _Prepared, result: UpsertResult, state: StudyState
    ) -> StoreOutcome:
        """After the commit: wait until the blob (and the commit) are durable, then remove
        what the index no longer names."""
        header, row, committed = prepared
        key, created = row.blob.key, committed.created
        if result.outcome is UpsertOutcome.ALREADY_PRESENT:
            if result.existing_blob_key != key and created:
                self._remove(key)
            _durable(committed.wait_durable, key)  # the commit's sync, if not yet
            return _outcome(StoreStatus.ALREADY_PRESENT, header, state)
        try:
            _durable(committed.wait_durable, key)
        except OutOfResources:
            self._undo(header.sop_instance_uid, key, result.outcome, created)
            raise
        if result.replaced_blob_key:  # only once its successor is durable
            self._remove(result.replaced_blob_key)
        status = (
            StoreStatus.REPLACED if result.outcome is UpsertOutcome.REPLACED else StoreStatus.STORED
        )
        return _outcome(status, header, state)

    def _undo(self, uid: str, key: str, outcome: UpsertOutcome, created: bool) -> None:
        """A new instance whose blob could not be made durable is refused: its row goes again
        (and its blob, if this store made it). A replaced instance keeps the new row, whose blob
        is readable, and its former blob (swept as an orphan later): the peer was told it
        failed and may send it again."""
        if outcome is not UpsertOutcome.INSERTED:
            return
        try:
            with self._unit_of_work(write=True) as repo:
                record_deleted_instances(repo, [uid])
                repo.delete_instances([uid])
                referenced = repo.blob_referenced(key)
        except Exception:  # the refusal stands; `pacs check` reports what is left
            log.exception("could not remove the row of instance %s after its sync failed", uid)
            return
        if created and not referenced:
            self._remove(key)

    def _remove(self, key: str) -> None:
        """Delete a blob no row names; one the store cannot delete now (an object store that
        is down) is left for the orphan sweep, and the store's answer stands."""
        try:
            self.blobs.delete(key)
        except BlobStoreUnavailable as error:
            log.warning("blob %s left for the orphan sweep: %s", key, error)

    @contextmanager
    def _unit_of_work(self, *, write: bool, files_too: bool = False) -> Iterator[Repository]:
        """The index's unit of work, its failures told in the services' words."""
        try:
            with self.index.unit_of_work(write=write, files_too=files_too) as repo:
                yield repo
        except IndexNotDurable as exc:
            log.error("the index commit could not be made durable: %s", exc)
            raise OutOfResources("the index could not be made durable") from exc
        except IndexUnavailable as exc:
            log.error("the index is unavailable: %s", exc)
            raise OutOfResources("the index is unavailable") from exc
        except IndexDataError as exc:
            log.warning("the index refused an instance's values: %s", exc)
            raise InvalidInstance("the index cannot hold a value of this instance") from exc


def _outcome(status: StoreStatus, header: Header, state: StudyState) -> StoreOutcome:
    return StoreOutcome(
        status=status,
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        study_state=state,
    )


def _check_expected(header: Header, expected: Expected) -> None:
    """The dataset must be what the request announced: C-STORE's SOP Class and Instance
    (PS3.4 B.2.3, 0xA900), STOW-RS's target study (PS3.18 10.5.1). Checked before the blob
    is committed, so nothing of a mismatching instance is written."""
    if expected.sop_class_uid is not None and header.sop_class_uid != expected.sop_class_uid:
        raise SopClassMismatch(
            f"dataset SOP Class UID {header.sop_class_uid} differs from the request's "
            f"{expected.sop_class_uid}"
        )
    if (
        expected.sop_instance_uid is not None
        and header.sop_instance_uid != expected.sop_instance_uid
    ):
        raise SopClassMismatch(
            f"dataset SOP Instance UID {header.sop_instance_uid} differs from the request's "
            f"{expected.sop_instance_uid}"
        )
    if (
        expected.study_instance_uid is not None
        and header.study_instance_uid != expected.study_instance_uid
    ):
        raise StudyMismatch(
            f"instance {header.sop_instance_uid} belongs to study {header.study_instance_uid}, "
            f"not to the request's study {expected.study_instance_uid}",
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
        )


T = TypeVar("T")


def _durable(wait: Callable[[], None], key: str) -> None:
    """Wait until the blob is on disk; a failed sync refuses the store (0xA700)."""
    try:
        _guard_space(wait, operation="sync")
    except OSError as exc:
        log.error("sync of blob %s failed: %s", key, exc)
        raise OutOfResources("the file could not be made durable") from exc


def _guard_space(action: Callable[[], T], operation: str = "write") -> T:
    """Disk full (or quota), or an object store that cannot be reached, is out of resources
    (0xA700), not a crash. Any failure of the blob store counts in the metrics as one of
    ``operation``."""
    try:
        return action()
    except OSError as exc:
        metrics.blob_error(operation)
        if isinstance(exc, BlobStoreUnavailable):
            log.error("%s: %s", UNAVAILABLE, exc)
            raise OutOfResources(UNAVAILABLE) from exc
        if exc.errno in _NO_SPACE:
            log.error("the blob store is full: %s", exc)
            raise OutOfResources("no space left in the store") from exc
        raise
