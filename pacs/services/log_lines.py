"""What a log line carries besides its message, and the JSON form of it
(``--log-format json``).

Two context variables say what a line is about: :data:`ASSOCIATION_ID`, set where a DIMSE
connection is taken up (``pacs.dimse.transport.serving``; pynetdicom passes it on to the
association's threads, ``_config.PASS_CONTEXTVARS``), and :data:`REQUEST_ID`, set for each
HTTP request (``pacs.http.telemetry``). :class:`JsonFormatter` writes a record as one JSON
object on one line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``process``,
``thread``, ``association_id`` or ``request_id`` when set, and ``exception`` (the traceback)
when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from contextvars import ContextVar

ASSOCIATION_ID: ContextVar[str | None] = ContextVar("pacs_association_id", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("pacs_request_id", default=None)


def new_association_id() -> str:
    """12 hex digits, random: unique among a site's associations for any practical purpose,
    short enough to read and grep."""
    return secrets.token_hex(6)


class ContextFilter(logging.Filter):
    """Puts the context variables on each record, in the thread that logs it (a handler
    working elsewhere, a queue's, would see none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.association_id = ASSOCIATION_ID.get()
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (a message's line breaks are escaped in it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key in ("association_id", "request_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)
