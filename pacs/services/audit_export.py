"""The audit trail, exported: every row, whoever wrote it, sent as a DICOM Audit Message
(PS3.15 A.5, :mod:`pacs.services.audit_message`) to a syslog receiver
(:mod:`pacs.services.syslog`).

Rows are written in many places (the workflow inside its transactions, the query and refusal
writer, the DIMSE worker processes), so the exporter does not hook any of them: a thread of the
listening process reads the audit table by id, after a cursor, in batches, sends each batch and
then moves the cursor. Stores and queries never wait for it, whatever the receiver does: it only
reads the index. An unreachable or failing receiver is retried with a growing pause (up to
``retry_max_s``) and logged once per outage, its events kept in the index meanwhile.

Delivery: the cursor (the last id sent, and the ids skipped, below) is kept in a small file in
the data folder, written after each batch is sent, so a restart resumes where the last run
stopped: nothing is lost and at most the batch in flight at a crash (or a failed send) is sent
twice. At the first start (no cursor file) the export begins after the newest row: history is
not replayed. Over UDP a receiver that is down loses what is sent meanwhile (RFC 5426 confirms
nothing); use ``tls`` (or ``tcp``) where that matters.

Ids in commit order: on PostgreSQL a transaction may take an id and commit after a later one has
(concurrent writers); on SQLite writers take turns and ids are never skipped. A gap below the
newest id read is remembered and read again until its row appears or ``hole_grace_s`` passes (a
rolled-back insert leaves a gap for good).

Not yet for several replicas sharing one database: each would export every row (the cursor is
per data folder). A later issue moves the cursor into the index, claimed with a lease.

The Application Activity events (110100: start, stop) are sent when the exporter starts and
stops; the stop event only if the receiver can be reached then (it is not a row).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pacs.services.audit_message import (
    AuditSource,
    Outcome,
    RenderedMessage,
    application_activity,
    messages_for,
)
from pacs.services.errors import OutOfResources
from pacs.services.syslog import HEADER_OVERHEAD, SyslogHeader, SyslogSender, frame_message
from storage.index import Index, IndexUnavailable
from storage.index.audit_feed import FeedEvent

log = logging.getLogger(__name__)

MAX_HOLES = 1000  # ids remembered as skipped at once; a larger jump is not waited for


@dataclass
class Cursor:
    """The last id sent, and the ids below it that were skipped (when first seen missing)."""

    after: int
    holes: dict[int, float] = field(default_factory=dict)  # id -> time.monotonic() when seen

    @classmethod
    def load(cls, path: Path) -> Cursor | None:
        try:
            data = json.loads(path.read_text())
            after = int(data["after"])
            holes = [int(hole) for hole in data.get("holes", [])]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error("audit syslog: the cursor file %s cannot be read (%s): starting after "
                      "the newest event", path, error)
            return None
        seen = time.monotonic()  # a restart gives each remembered gap its grace again
        return cls(after, dict.fromkeys(holes[:MAX_HOLES], seen))

    def save(self, path: Path) -> None:
        """Written whole or not at all (a temporary file renamed over the old one)."""
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w") as file:
            json.dump({"after": self.after, "holes": sorted(self.holes)}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)


class AuditExporter:
    """Sends the audit trail to syslog from a background thread (see the module docstring)."""

    def __init__(
        self,
        *,
        index: Index,
        sender: SyslogSender,
        source: AuditSource,
        cursor_file: Path,
        max_bytes: int,
        header: SyslogHeader | None = None,
        target: str = "syslog",
        batch_size: int = 200,
        poll_interval_s: float = 0.5,
        retry_max_s: float = 30.0,
        hole_grace_s: float = 60.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.index = index
        self.sender = sender
        self.source = source
        self.cursor_file = cursor_file
        self.max_xml_bytes = max_bytes - HEADER_OVERHEAD
        self.header = header or SyslogHeader.here()
        self.target = target
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retry_max_s = retry_max_s
        self.hole_grace_s = hole_grace_s
        self.stop_timeout_s = stop_timeout_s
        self.cursor: Cursor | None = None
        self._pending: list[RenderedMessage] = []  # sent before the next batch (the start)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None  # what fails in the current outage
        self._failing_since = 0.0

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Read the cursor (the first time: the newest row) and start sending."""
        try:
            self._load_cursor()
        except OutOfResources as error:  # the thread reads it once the index answers
            log.error("audit syslog: %s", error)
        self._pending.append(application_activity(
            start=True, at=datetime.now(UTC), source=self.source, launcher=_launcher()))
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send what is left (for at most ``stop_timeout_s``) and the stop event, then end.
        Never waits longer than that on a receiver that does not answer."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout_s + 1.0)
            if self._thread.is_alive():
                log.warning("audit syslog: not every event could be sent before stopping; "
                            "they are sent at the next start")
        self.sender.close()

    # -- one round -------------------------------------------------------------------------
    def export_once(self) -> int:
        """Read one batch after the cursor, send it, move the cursor; the number of rows
        sent. Raises ``OSError`` when the receiver cannot be reached (the cursor stays) and
        :class:`OutOfResources` when the index cannot."""
        if self.cursor is None:
            self._load_cursor()
        cursor = self.cursor
        assert cursor is not None
        if self._pending:
            self._send(self._pending)
            self._pending = []
        try:
            with self.index.unit_of_work() as repository:
                events = repository.audit_feed.after(cursor.after, limit=self.batch_size,
                                                     also=cursor.holes.keys())
        except IndexUnavailable as error:
            raise OutOfResources("the index is unavailable") from error
        if events:
            self._send(self._render(events))
        self._advance(cursor, events)
        return len(events)

    def _send(self, messages: list[RenderedMessage]) -> None:
        framed = [frame_message(message.xml, at=message.at,
                                failure=message.outcome is not Outcome.SUCCESS,
                                header=self.header) for message in messages]
        self.sender.send(framed)

    def _render(self, events: list[FeedEvent]) -> list[RenderedMessage]:
        try:
            return messages_for(events, self.source, max_bytes=self.max_xml_bytes)
        except Exception:
            # a row this code cannot describe must not hold back every later one
            log.exception("audit syslog: events %d-%d cannot be made into messages; sending "
                          "them one by one", events[0].id, events[-1].id)
        rendered = []
        for event in events:
            try:
                rendered += messages_for([event], self.source, max_bytes=self.max_xml_bytes)
            except Exception:
                log.exception("audit syslog: event %d (%s) skipped: it cannot be made into "
                              "a message", event.id, event.action)
        return rendered

    def _advance(self, cursor: Cursor, events: list[FeedEvent]) -> None:
        """Move past ``events``; remember the ids skipped below the newest one; forget gaps
        older than the grace; save the cursor when it changed."""
        now = time.monotonic()
        changed = False
        expected = cursor.after + 1
        for event in events:
            if event.id in cursor.holes:
                del cursor.holes[event.id]
                changed = True
                continue
            if event.id < expected:
                continue
            for missing in range(expected, min(event.id, expected + MAX_HOLES)):
                if len(cursor.holes) < MAX_HOLES:
                    cursor.holes[missing] = now
            expected = event.id + 1
        if expected - 1 > cursor.after:
            cursor.after = expected - 1
            changed = True
        expired = [hole for hole, seen in cursor.holes.items()
                   if now - seen > self.hole_grace_s]
        for hole in expired:
            del cursor.holes[hole]
        if changed or expired:
            cursor.save(self.cursor_file)

    def _load_cursor(self) -> None:
        if self.cursor is not None:
            return
        try:
            with self.index.unit_of_work() as repository:
                newest = repository.audit_feed.newest_id()
        except IndexUnavailable as error:
            raise OutOfResources("the index is unavailable") from error
        cursor = Cursor.load(self.cursor_file)
        if cursor is None:
            cursor = Cursor(newest)
            log.info("audit syslog: exporting the audit events after #%d (the newest)", newest)
        elif cursor.after > newest:
            log.warning("audit syslog: the cursor (#%d) is past the newest event (#%d), the "
                        "index was replaced: exporting after #%d", cursor.after, newest, newest)
            cursor = Cursor(newest)
        cursor.save(self.cursor_file)
        self.cursor = cursor

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        pause = 0.0
        deadline: float | None = None
        while True:
            if self._stopping.is_set():
                if deadline is None:
                    deadline = time.monotonic() + self.stop_timeout_s
                if self._failing or time.monotonic() > deadline:
                    return
            try:
                sent = self.export_once()
            except OSError as error:  # the receiver (ssl.SSLError is an OSError)
                self._failed("receiver", f"cannot send to {self.target}: {error}")
            except OutOfResources as error:
                self._failed("index", str(error))
            else:
                self._recovered()
                pause = 0.0
                if sent >= self.batch_size:
                    continue
                if self._stopping.is_set():
                    self._stop_event()
                    return
                self._stopping.wait(self.poll_interval_s)
                continue
            pause = min(max(pause * 2, 1.0), self.retry_max_s)
            self._stopping.wait(pause)

    def _failed(self, what: str, message: str) -> None:
        if self._failing is None:
            self._failing, self._failing_since = what, time.monotonic()
            log.error("audit syslog: %s; retrying, the events wait in the index", message)
        else:
            log.debug("audit syslog: still failing: %s", message)

    def _recovered(self) -> None:
        if self._failing is not None:
            log.warning("audit syslog: events are sent again after %.0f s",
                        time.monotonic() - self._failing_since)
            self._failing = None

    def _stop_event(self) -> None:
        try:
            self._send([application_activity(start=False, at=datetime.now(UTC),
                                             source=self.source, launcher=_launcher())])
        except OSError as error:
            log.warning("audit syslog: the stop event could not be sent: %s", error)


def _launcher() -> str | None:
    """The user this server runs as: the Application Launcher of 110100 (A.5.3.1)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
