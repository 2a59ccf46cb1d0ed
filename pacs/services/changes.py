"""The change feed: an ordered, gap-free log of what happened to the archive, for pollers
(``GET /api/changes?since=SEQ``, ``GET /dicom-web/changefeed``) and webhooks.

Events (:class:`ChangeEvent`): an instance ``stored`` (or ``replaced``, with ``--overwrite``),
a study ``archived``, ``quarantined``, ``corrected``, ``rejected`` (a series, when a
viewer rejects one), ``deleted`` (purged, or an instance removed by a repair) and ``routed``
(a routing job sent it). Each is written by :func:`record_change` (or :func:`record_store`)
in the transaction of the change itself, so a change that rolls back leaves no event and a
committed one always has its event.

Numbers come later: :meth:`ChangeService.sequence` numbers committed events 1, 2, 3, ...
(``storage.index.changes`` says why an autoincrement id cannot be the number), and plans a
webhook delivery per numbered event and matching webhook, in the same transaction. It runs
before every read of the feed and on a short-period background worker. A poller that asks
for the changes after the last number it saw misses none and sees none twice, across
servers sharing the index; only the retention pass (``retention_days``) removes old ones.

The Microsoft DICOM service shape (``/dicom-web/changefeed``): ``Action`` is ``Create`` for a
store, ``Delete`` for a deletion, ``Update`` for every other event; ``State`` of an
instance's entry is ``current``, ``replaced`` (a later store of the same instance) or
``deleted`` (no longer in the index); of a study's entry, ``current`` or ``deleted``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pacs.services.units import unit_of_work
from storage.attributes import Level
from storage.index import (
    Index,
    InstanceRow,
    Repository,
    UpsertOutcome,
    UpsertResult,
)
from storage.index.changes import ChangeRecord, NewChange

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """A webhook, as the numbering sees it (``pacs.services.webhooks.Webhook``)."""

    def wants(self, event: str) -> bool: ...


#: The most changes one page answers (a larger ``limit`` is capped to it).
MAX_PAGE = 1000
#: Above any number the feed gives: a larger ``since`` / ``offset`` is a malformed request.
MAX_SEQ = 2**62
#: Changes one numbering pass takes at most (the worker goes on at once while busy).
SEQUENCE_BATCH = 1000


class ChangeEvent(StrEnum):
    STORED = "stored"
    REPLACED = "replaced"
    ARCHIVED = "archived"
    QUARANTINED = "quarantined"
    CORRECTED = "corrected"
    REJECTED = "rejected"
    DELETED = "deleted"
    ROUTED = "routed"


class Action(StrEnum):
    """The Microsoft DICOM service's change feed actions."""

    CREATE = "Create"
    DELETE = "Delete"
    UPDATE = "Update"


class EntryState(StrEnum):
    CURRENT = "current"
    REPLACED = "replaced"
    DELETED = "deleted"


_ACTIONS = {ChangeEvent.STORED: Action.CREATE, ChangeEvent.DELETED: Action.DELETE}


@dataclass(frozen=True)
class Change:
    """One numbered change (an entry of ``GET /api/changes``)."""

    seq: int
    time: dt.datetime
    event: ChangeEvent
    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None

    @property
    def action(self) -> Action:
        return _ACTIONS.get(self.event, Action.UPDATE)

    def as_json(self) -> dict[str, object]:
        """The entry of ``GET /api/changes``, which is also the body a webhook is posted."""
        return {
            "seq": self.seq,
            "time": _utc(self.time).isoformat().replace("+00:00", "Z"),
            "event": self.event.value,
            "StudyInstanceUID": self.study_instance_uid,
            "SeriesInstanceUID": self.series_instance_uid,
            "SOPInstanceUID": self.sop_instance_uid,
        }


@dataclass(frozen=True)
class ChangePage:
    changes: list[Change]
    last: int  # the highest number given so far (resume from the last entry's seq)


@dataclass(frozen=True)
class FeedEntry:
    """A change with the state of what it names now (the Microsoft change feed's entry)."""

    change: Change
    state: EntryState


# -- writing, in the transaction of the change ------------------------------------------------
def record_change(repository: Repository, event: ChangeEvent, study_instance_uid: str,
                  series_instance_uid: str | None = None,
                  sop_instance_uid: str | None = None) -> None:
    """Append an event to the feed, inside the change's own write unit of work."""
    repository.changes.append([NewChange(event.value, study_instance_uid, series_instance_uid,
                                         sop_instance_uid)])


def record_store(repository: Repository, row: InstanceRow, result: UpsertResult) -> None:
    """The events of one upsert: ``stored`` / ``replaced`` (nothing for an instance already
    present), and the new study's first state (``archived`` in auto mode, ``quarantined`` in
    manual mode) when it made the study. One statement."""
    if result.outcome is UpsertOutcome.ALREADY_PRESENT:
        return
    event = ChangeEvent.STORED if result.outcome is UpsertOutcome.INSERTED else \
        ChangeEvent.REPLACED
    changes = [NewChange(event.value, result.study_instance_uid,
                         str(row.values[Level.SERIES]["series_instance_uid"]),
                         str(row.values[Level.IMAGE]["sop_instance_uid"]))]
    if result.new_study and result.study_state in _STUDY_EVENTS:
        changes.append(NewChange(result.study_state, result.study_instance_uid))
    repository.changes.append(changes)


def record_deleted_instances(repository: Repository, sop_instance_uids: Sequence[str]) -> None:
    """``deleted`` events of instances about to be removed (call before the delete)."""
    found = [repository.find_instance(uid) for uid in sop_instance_uids]
    repository.changes.append([
        NewChange(ChangeEvent.DELETED.value, item.study_instance_uid, item.series_instance_uid,
                  item.sop_instance_uid) for item in found if item is not None])


_STUDY_EVENTS = frozenset({ChangeEvent.ARCHIVED.value, ChangeEvent.QUARANTINED.value})


class ChangeService:
    """Numbering, reading and pruning of the change feed; plans webhook deliveries. Thread
    safe."""

    def __init__(self, *, index: Index, webhooks: Sequence[Subscriber] = (),
                 retention: dt.timedelta = dt.timedelta(days=30)) -> None:
        self.index = index
        self.webhooks = tuple(webhooks)
        self.retention = retention

    def _unit_of_work(self, *, write: bool = False) -> AbstractContextManager[Repository]:
        return unit_of_work(self.index, write=write)

    def sequence(self) -> int:
        """Number the committed changes waiting for it (one batch) and plan their webhook
        deliveries; how many were numbered. A read first: no write lock when none waits."""
        with self._unit_of_work() as repository:
            if not repository.changes.unsequenced():
                return 0
        with self._unit_of_work(write=True) as repository:
            numbered = repository.changes.sequence(SEQUENCE_BATCH)
            repository.changes.add_deliveries(
                (change, n) for change in numbered for n, hook in enumerate(self.webhooks)
                if hook.wants(change.event))
        return len(numbered)

    def sequence_pass(self) -> bool:
        """The background worker's step: one :meth:`sequence`; True (run again at once) only
        when it numbered a whole batch. A pass that numbered a few is done: running again at
        once would follow every ingest commit with a write transaction of its own."""
        return self.sequence() >= SEQUENCE_BATCH

    def _sequence_all(self) -> None:
        while self.sequence() >= SEQUENCE_BATCH:
            pass

    def page(self, since: int, limit: int) -> ChangePage:
        """The changes numbered above ``since``, at most ``limit`` (capped at
        :data:`MAX_PAGE`), in order; and the highest number so far."""
        self._sequence_all()
        with self._unit_of_work() as repository:
            records = repository.changes.after(since, min(limit, MAX_PAGE))
            last = repository.changes.last()
        return ChangePage([_change(r) for r in records], last)

    def feed(self, offset: int, limit: int) -> list[FeedEntry]:
        """The Microsoft change feed page: entries numbered above ``offset``."""
        self._sequence_all()
        with self._unit_of_work() as repository:
            records = repository.changes.after(offset, min(limit, MAX_PAGE))
            return _entries(repository, [_change(r) for r in records])

    def latest(self) -> FeedEntry | None:
        self._sequence_all()
        with self._unit_of_work() as repository:
            record = repository.changes.latest()
            if record is None:
                return None
            return _entries(repository, [_change(record)])[0]

    def change(self, seq: int) -> Change | None:
        with self._unit_of_work() as repository:
            record = repository.changes.get(seq)
        return _change(record) if record is not None else None

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete the changes older than the retention period (and the done deliveries);
        how many changes went. A change whose webhook delivery is still open is kept."""
        before = (now or dt.datetime.now(dt.UTC)) - self.retention
        pruned = 0
        while True:
            with self._unit_of_work(write=True) as repository:
                count = repository.changes.prune(before)
            pruned += count
            if count == 0:
                return pruned


def _utc(at: dt.datetime) -> dt.datetime:
    """SQLite gives back the UTC times it was given without their zone."""
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def _change(record: ChangeRecord) -> Change:
    return Change(record.seq, record.at, ChangeEvent(record.event), record.study_instance_uid,
                  record.series_instance_uid, record.sop_instance_uid)


def _entries(repository: Repository, changes: list[Change]) -> list[FeedEntry]:
    """Each change with the state of the instance (or study) it names, from two reads."""
    sops = [c.sop_instance_uid for c in changes if c.sop_instance_uid]
    present = repository.changes.instances_present(sops)
    newest = repository.changes.newest_of_instances(sops)
    studies = repository.changes.studies_present(
        c.study_instance_uid for c in changes if not c.sop_instance_uid)
    entries = []
    for change in changes:
        if change.sop_instance_uid:
            if change.sop_instance_uid not in present:
                state = EntryState.DELETED
            elif newest.get(change.sop_instance_uid, change.seq) > change.seq:
                state = EntryState.REPLACED
            else:
                state = EntryState.CURRENT
        else:
            state = (EntryState.CURRENT if change.study_instance_uid in studies
                     else EntryState.DELETED)
        entries.append(FeedEntry(change, state))
    return entries
