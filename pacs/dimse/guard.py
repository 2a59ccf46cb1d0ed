"""What a DIMSE peer may hold: PDU sizes, time to send a PDU, connections per address.

Every input a peer controls is bounded before it costs memory or time:

* :class:`PduLimits`: the largest PDU of each type the server reads (a P-DATA-TF PDU up to the
  Maximum Length it advertises, PS3.8 D.1; an A-ASSOCIATE-RQ up to 64 KiB; the fixed-size
  PDUs, 4 bytes by PS3.8 9.3, up to 1 KiB) and the time a PDU, once begun, has to arrive.
  Enforced by ``tuning.bound_pdus`` in pynetdicom's one PDU reader.
* :class:`ConnectionCount`: connections open at once per source address, counted by the
  listening process for the connections it serves and those it hands to workers (they report
  each close back, ``handoff.py``); the excess is closed before it costs a thread.
* :class:`RefusalAudit`: refusals (of a connection, an association, a PDU) in the audit trail,
  aggregated per address and reason and written by one background thread, so a flood of
  refusals costs a counter each, not an index write each.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from pacs.services.retrieve import AuditSink
from pacs.services.workflow import actor

log = logging.getLogger(__name__)

# PS3.8 9.3: PDU types 1-7; their largest accepted PDU-length field
MAX_ASSOCIATE_PDU = 64 * 1024
MAX_SMALL_PDU = 1024
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, P_DATA_TF = 0x01, 0x02, 0x04


@dataclass(frozen=True)
class PduLimits:
    """``max_pdu``: the Maximum Length (bytes) of a received P-DATA-TF PDU's variable field,
    as advertised (PS3.8 D.1); ``read_timeout``: seconds a PDU has to arrive once its first
    byte has, and the ARTIM and idle time of a connection."""

    max_pdu: int
    read_timeout: float
    by_type: tuple[int, ...] = field(init=False)  # largest length by PDU type (0: unknown)

    def __post_init__(self) -> None:
        lengths = [0, MAX_ASSOCIATE_PDU, MAX_ASSOCIATE_PDU, MAX_SMALL_PDU, self.max_pdu,
                   MAX_SMALL_PDU, MAX_SMALL_PDU, MAX_SMALL_PDU]
        object.__setattr__(self, "by_type", tuple(lengths))


class ConnectionCount:
    """Connections open at once per source address, at most ``limit`` each. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, host: str) -> bool:
        """Count a new connection from ``host``; False (not counted) when it has ``limit``."""
        with self._lock:
            count = self._open.get(host, 0)
            if count >= self.limit:
                return False
            self._open[host] = count + 1
            return True

    def release(self, host: str) -> None:
        with self._lock:
            count = self._open.get(host, 0) - 1
            if count > 0:
                self._open[host] = count
            else:
                self._open.pop(host, None)

    def open(self, host: str) -> int:
        with self._lock:
            return self._open.get(host, 0)


AUDIT_EVERY_S = 10.0  # at most one audit write per (address, action, reason) this often
MAX_PENDING = 256  # distinct (address, action, reason) waiting; more are counted as one


class RefusalAudit:
    """Refusals for the audit trail, one record per (who, action, reason) and period, with
    how many there were (``detail["count"]``). The first one of a quiet period is written at
    once; ``note`` never touches the index itself."""

    def __init__(self, sink: AuditSink | None, every: float = AUDIT_EVERY_S) -> None:
        self.sink = sink
        self.every = every
        self._pending: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def note(self, *, host: str, action: str, reason: str, ae_title: str | None = None) -> bool:
        """Count one refusal of ``host`` (and its calling AE title, when known); True when it
        is the first of its kind since the last write (worth a log line)."""
        if self.sink is None:
            return True
        key = (actor("dimse", ae_title, host), action, reason)
        with self._lock:
            if key not in self._pending and len(self._pending) >= MAX_PENDING:
                key = ("dimse:(many addresses)", action, reason)
            count = self._pending.get(key, 0) + 1
            self._pending[key] = count
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._write_forever, name="dimse-refusal-audit", daemon=True
                )
                self._thread.start()
        self._wanted.set()
        return count == 1

    def stop(self) -> None:
        """Write what is pending and stop."""
        self._stopped = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(10)
        self._write()

    def _write_forever(self) -> None:
        pause = threading.Event()
        while not self._stopped:
            self._wanted.wait()
            self._wanted.clear()
            self._write()
            pause.wait(self.every)  # the refusals of the next period are written together

    def _write(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        sink: Any = self.sink
        for (who, action, reason), count in pending.items():
            try:
                sink(who=who, action=action, outcome=reason, detail={"count": count})
            except Exception:  # the audit must not take the listener down
                log.exception("cannot audit %d %s of %s", count, action, who)

