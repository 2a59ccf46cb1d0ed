"""How DIMSE messages travel: pynetdicom exactly as published, or pacs's fast path.

``PACS_DIMSE_TRANSPORT`` chooses, once per process, in the composition root (``pacs/serve.py``
calls :func:`install` before any association; nothing here changes pynetdicom at import time):

* ``stock``: pynetdicom 3.0's own DUL, state machine, reactors, DIMSE codec and service classes,
  configured only through its documented settings (``_config``) and event handlers; Q/R is
  served by ``published.py``. The yardstick, and the fall-back when a pynetdicom release breaks
  the fast path.
* ``fast`` (the default): ``fast.py`` and the modules it installs replace or reach into
  pynetdicom's transport: the PDU reader (bounded, ``guard.PduLimits``), the reactors (woken
  by work instead of polling), the C-STORE receive path (read and answered on the connection's
  own thread, ``inline.py``), the C-STORE send path (``fast.send_file``), the lean command
  codecs (``decoding.py``, ``encoding.py``) and the receive files (``receive_files.py``).

This package is the only place in pacs that touches pynetdicom's internals; every function it
replaces or copies is pinned by a hash of its upstream source (``fast.UPSTREAM``, checked by
``tests/dimse/test_transport.py``), and pynetdicom is pinned to the release it was written for.

The rest of ``pacs.dimse`` talks to the chosen :class:`Transport` through the hooks below.
"""

from __future__ import annotations

import logging
import socket
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pynetdicom import _config

from pacs.dimse.guard import PduLimits

KINDS = ("fast", "stock")


class Transport:
    """pynetdicom as published: every hook uses its public API only (``stock``)."""

    name = "stock"
    fast_service_classes = False  # Q/R by published.py's event handlers

    def install(self) -> None:
        """Process-wide settings, once, before any association (documented options): received
        C-STORE data sets go to a file as they arrive and sent ones stream from theirs;
        pynetdicom's log handlers are bound only when their lines would be heard; the
        association's threads get the context of the thread that made it (its association
        id for the log lines: ``serving.py``)."""
        _config.PASS_CONTEXTVARS = True
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.STORE_SEND_CHUNKED_DATASET = True
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            _config.LOG_HANDLER_LEVEL = "none"

    def receive_files(self, folder: Path) -> Any:
        """The maker of C-STORE receive files in ``folder`` (``stop()`` it before sweeping
        the folder), or None: pynetdicom's temporary files."""
        return None

    def accepted(self, assoc: Any, limits: PduLimits | None, refused: Any = None,
                 store: Any = None) -> None:
        """An acceptor's connection opened (EVT_CONN_OPEN), before the association starts:
        ``refused(assoc, why)`` is told of a connection closed for breaking ``limits``;
        ``store`` (``inline.Store``) may serve C-STORE requests without pynetdicom's messages."""

    def closed(self, assoc: Any) -> Path | None:
        """An acceptor's connection closed: the file of a data set it left half-received,
        closed, for the caller to remove (None: nothing left)."""
        return None

    def requested(self, assoc: Any) -> None:
        """A requestor's connection opened (an association pacs makes: C-MOVE, routing):
        TCP_NODELAY on its socket, or every request waits for Nagle's algorithm (22
        instances/s to a DCMTK storescp)."""
        raw = assoc.dul.socket.socket
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def serve_requests_with(self, choose: Any) -> None:
        """Only the fast transport replaces pynetdicom's service classes."""
        raise NotImplementedError("the stock transport serves Q/R by event handlers")

    def connected(self, assoc: Any) -> bool:
        """Whether ``assoc`` can still carry requests."""
        return bool(assoc.is_established)

    def sending(self, assoc: Any) -> AbstractContextManager[None]:
        """Around a batch of C-STORE requests on ``assoc`` (:meth:`send_file` in a loop)."""
        return nullcontext()

    def send_file(self, assoc: Any, path: Path, *, msg_id: int, originator_aet: str | None,
                  originator_id: int | None) -> Any:
        """C-STORE the file at ``path`` over ``assoc``; the response's status Dataset (empty
        when the peer did not answer)."""
        return assoc.send_c_store(path, msg_id=msg_id, originator_aet=originator_aet,
                                  originator_id=originator_id)


def install(kind: str = "fast") -> Transport:
    """The transport named ``kind`` (``KINDS``), installed; call once per process."""
    if kind not in KINDS:
        raise ValueError(f"unknown DIMSE transport {kind!r} (choose from {', '.join(KINDS)})")
    transport: Transport
    if kind == "fast":
        from pacs.dimse.transport.fast import FastTransport

        transport = FastTransport()
    else:
        transport = Transport()
    transport.install()
    return transport
