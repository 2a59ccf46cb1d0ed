"""The audit trail's writer: who did what, and how it ended, appended to the index.

Stores and QA actions are audited inside the transaction that does them (the workflow);
retrievals get one event per study when they end (:meth:`AuditTrail.record`), with their
real outcome. Queries (C-FIND, QIDO-RS) are many and change nothing: a write transaction per
query would queue behind ingest on SQLite (one writer at a time) and slow both. They go on a
bounded in-memory queue instead, which a background thread writes in batches, one transaction
per batch, at most ``flush_interval_s`` after a query.

Refusals of peers (a DIMSE connection over its address's limit, a rejected association, an
HTTP request refused with 403 or 431, ...) are what a flood is made of: each is only counted
(:meth:`AuditTrail.refusal`), per actor, action and reason, and the same writer turns each
count into one row with ``detail["count"]`` at its next flush; at most ``MAX_REFUSAL_KINDS``
kinds are kept apart between two flushes, the rest are folded into one row.

The trade-off, stated: a kill -9 (or a power loss) loses the query events of at most the last
flush interval (half a second by default); a clean stop writes them all (:meth:`close`). If
the index stays unreachable long enough to fill the queue, the newest events are dropped and
the number dropped is logged and then recorded as an event of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from typing import Any

from pacs.services.errors import OutOfResources
from storage.index import Index, IndexDataError, IndexUnavailable
from storage.query import (
    Condition,
    Matcher,
    Query,
    Range,
    SequenceItem,
    SingleValue,
    UidList,
    ValueList,
    Wildcard,
)
from storage.worklist import WorklistQuery

log = logging.getLogger(__name__)

MAX_KEYS = 16  # query keys recorded per query (a query may carry dozens of return keys)
MAX_VALUE = 64  # characters kept of each key's value (a UID list can be thousands)
_RETRY_S = 5.0  # between attempts to write while the index cannot be reached
MAX_REFUSAL_KINDS = 64  # (actor, action, reason) counted apart between two flushes
MANY_PEERS = "(many peers)"  # the actor of the row the other kinds are folded into


class AuditTrail:
    """Appends audit events. Thread-safe; the query writer starts with the first query."""

    def __init__(
        self,
        *,
        index: Index,
        queries: bool = True,
        flush_interval_s: float = 0.5,
        max_pending: int = 10_000,
        batch_size: int = 500,
    ) -> None:
        self.index = index
        self.queries = queries
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.batch_size = batch_size
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._closing = False
        self._dropped = 0
        # (actor, action, reason) -> [count, detail of the first one]
        self._refusals: dict[tuple[str, str, str], list[Any]] = {}

    # -- events written at once ------------------------------------------------------------
    def record(self, *, who: str, action: str, outcome: str,
               study_instance_uid: str | None = None, detail: dict[str, Any] | None = None
               ) -> None:
        """Append one event in a transaction of its own."""
        self._write([_event(who, action, outcome, study_instance_uid, detail)])

    # -- queries, written in the background ------------------------------------------------
    def query(self, *, who: str, how: str, query: Query | WorklistQuery, matches: int,
              outcome: str | None = None, capped: bool = False) -> None:
        """Queue the event of one query: its level (WORKLIST for a Modality Worklist
        query), keys (bounded), number of matches and the actor. ``outcome`` overrides "N
        matches" (a refusal, a cancel)."""
        if not self.queries:
            return
        detail: dict[str, Any] = {"how": how, "level": str(query.level), "matches": matches,
                                  "keys": describe_keys(query.conditions)}
        if capped:
            detail["capped"] = True
        if query.limit is not None:
            detail["limit"] = query.limit
        if isinstance(query, Query) and query.offset:
            detail["offset"] = query.offset
        # no study UID on the event: a viewer's queries would flood a study's history (the
        # keys say which study a query named)
        self._enqueue(_event(who, "query", outcome or f"{matches} matches", None, detail))

    def refused_query(self, *, who: str, how: str, reason: str,
                      query: Query | WorklistQuery | None = None) -> None:
        """Queue the event of a query that was refused (malformed, the index down)."""
        if not self.queries:
            return
        detail: dict[str, Any] = {"how": how, "reason": reason[:200], "matches": 0}
        if query is not None:
            detail["level"] = str(query.level)
            detail["keys"] = describe_keys(query.conditions)
        self._enqueue(_event(who, "query", "refused", None, detail))

    # -- refusals, counted and written in the background -------------------------------------
    def refusal(self, *, who: str, action: str, reason: str,
                detail: dict[str, Any] | None = None) -> bool:
        """Count one refusal of a peer; never blocks on the index, never fails. True when it
        is the first of its kind since the last write (worth a log line: a flood logs one)."""
        key = (who[:200], action, reason[:120])
        with self._lock:
            entry = self._refusals.get(key)
            if entry is None and len(self._refusals) >= MAX_REFUSAL_KINDS:
                key = (MANY_PEERS, action, "various reasons")
                entry = self._refusals.get(key)
                detail = None
            if entry is None:
                entry = self._refusals[key] = [0, dict(detail or {})]
            entry[0] += 1
            self._start_writer()
            return bool(entry[0] == 1)

    def flush(self) -> None:
        """Write every queued event now (for a clean stop, and for tests); stops early, the
        events kept queued, when the index cannot be reached."""
        while True:
            with self._lock:
                batch = self._take()
            if not batch or not self._write_batch(batch):
                return

    def close(self) -> None:
        """Stop the writer thread after it wrote what is queued."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(30.0)
        self.flush()

    # -- the writer ------------------------------------------------------------------------
    def _enqueue(self, event: dict[str, Any]) -> None:
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._dropped += 1
                return
            self._pending.append(event)
            if not self._start_writer() and len(self._pending) >= self.batch_size:
                self._wake.notify()

    def _start_writer(self) -> bool:
        """Start the writer thread if it is not running (the lock held); True if started."""
        if self._writer is not None or self._closing:
            return False
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()
        return True

    def _take(self) -> list[dict[str, Any]]:
        """Up to ``batch_size`` queued events (the lock held), and a note of dropped ones."""
        batch = [self._pending.popleft()
                 for _ in range(min(self.batch_size, len(self._pending)))]
        refusals, self._refusals = self._refusals, {}
        batch += [_event(who, action, reason, None, {**detail, "count": count})
                  for (who, action, reason), (count, detail) in refusals.items()]
        if self._dropped:
            log.error("audit: %d query events dropped (the queue was full)", self._dropped)
            batch.append(_event("pacs:audit", "audit", f"{self._dropped} query events dropped",
                                None, None))
            self._dropped = 0
        return batch

    def _run(self) -> None:
        failed = False
        while True:
            with self._lock:
                if failed:  # the index is down: try again in a while (a full queue's
                    # notifications do not hasten it)
                    retry = time.monotonic() + max(self.flush_interval_s, _RETRY_S)
                    while not self._closing and (left := retry - time.monotonic()) > 0:
                        self._wake.wait(left)
                elif not self._closing and len(self._pending) < self.batch_size:
                    self._wake.wait(self.flush_interval_s)
                if self._closing:
                    return  # close() writes what is left, from its own thread
                batch = self._take()
            failed = bool(batch) and not self._write_batch(batch)

    def _write_batch(self, batch: list[dict[str, Any]]) -> bool:
        """Write ``batch``; when the index is down, put it back (as far as the queue has
        room) for the next round and return False."""
        try:
            self._write(batch)
        except OutOfResources:
            with self._lock:
                room = max(0, self.max_pending - len(self._pending))
                self._pending.extendleft(reversed(batch[:room]))
                self._dropped += len(batch) - len(batch[:room])
            return False
        return True

    def _write(self, events: list[dict[str, Any]]) -> None:
        try:
            with self.index.unit_of_work(write=True) as repository:
                repository.audit.append_many(events)
        except IndexUnavailable as error:
            log.error("audit: the index is unavailable: %s", error)
            raise OutOfResources("the index is unavailable") from error
        except IndexDataError as error:  # a value the column cannot hold: drop, say so
            log.error("audit: %d events refused by the index: %s", len(events), error)


def describe_keys(conditions: tuple[Condition, ...]) -> dict[str, str]:
    """The matching keys of a query as text, bounded: at most ``MAX_KEYS`` keys of at most
    ``MAX_VALUE`` characters each (a peer controls both)."""
    keys: dict[str, str] = {}
    for condition in conditions[:MAX_KEYS]:
        keys[condition.keyword[:64]] = _clip(_matcher_text(condition.matcher))
    if len(conditions) > MAX_KEYS:
        keys["..."] = f"{len(conditions) - MAX_KEYS} more"
    return keys


def _matcher_text(matcher: Matcher) -> str:
    """The value as the peer wrote it (PS3.4 C.2.2.2 forms)."""
    if isinstance(matcher, SingleValue):
        return matcher.value
    if isinstance(matcher, Wildcard):
        return matcher.pattern
    if isinstance(matcher, Range):
        return f"{matcher.low or ''}-{matcher.high or ''}"
    if isinstance(matcher, UidList):
        return "\\".join(matcher.uids[:4]) + ("\\..." if len(matcher.uids) > 4 else "")
    if isinstance(matcher, ValueList):
        return "\\".join(matcher.values[:4]) + ("\\..." if len(matcher.values) > 4 else "")
    if isinstance(matcher, SequenceItem):
        inner = describe_keys(matcher.conditions)
        return "(" + ", ".join(f"{k}={v}" for k, v in inner.items()) + ")"
    return type(matcher).__name__


def _clip(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def _event(who: str, action: str, outcome: str, study_instance_uid: str | None,
           detail: dict[str, Any] | None) -> dict[str, Any]:
    return {"at": dt.datetime.now(dt.UTC), "actor": who, "action": action, "outcome": outcome,
            "study_instance_uid": study_instance_uid, "detail": detail}
