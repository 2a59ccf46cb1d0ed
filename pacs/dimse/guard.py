"""What a DIMSE peer may hold: PDU sizes, time to send a PDU, connections per address.

Every input a peer controls is bounded before it costs memory or time:

* :class:`PduLimits`: the largest PDU of each type the server reads (a P-DATA-TF PDU up to the
  Maximum Length it advertises, PS3.8 D.1; an A-ASSOCIATE-RQ up to 64 KiB; the fixed-size
  PDUs, 4 bytes by PS3.8 9.3, up to 1 KiB) and the time a PDU, once begun, has to arrive.
  Enforced by ``transport.fast.bound_pdus`` in pynetdicom's one PDU reader.
* :class:`ConnectionCount`: connections open at once per source address, counted by the
  listening process for the connections it serves and those it hands to workers (they report
  each close back, ``handoff.py``); the excess is closed before it costs a thread.
* :class:`RefusalAudit`: refusals (of a connection, an association, a PDU) in the audit trail,
  counted per address and reason by the service's audit writer, so a flood of refusals costs
  a counter each, not an index write each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pacs.services.workflow import actor

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


class RefusalAudit:
    """Refusals of DIMSE peers for the audit trail: ``count`` is the service's
    ``AuditTrail.refusal``, which counts them per actor, action and reason and writes one row
    per kind from its background writer, so a flood costs a counter each, not an index write
    each (and never blocks the listener)."""

    def __init__(self, count: Callable[..., bool] | None) -> None:
        self.count = count

    def note(self, *, host: str, action: str, reason: str, ae_title: str | None = None,
             detail: dict[str, Any] | None = None, tls_subject: str | None = None) -> bool:
        """Count one refusal of ``host`` (and its calling AE title and TLS client certificate
        subject, when known); True when it is the first of its kind since the last write
        (worth a log line). ``detail`` is kept of the first of a kind."""
        if self.count is None:
            return True
        who = actor("dimse", ae_title, host, tls_subject=tls_subject)
        if detail is None:
            return self.count(who=who, action=action, reason=reason)
        return self.count(who=who, action=action, reason=reason, detail=detail)
