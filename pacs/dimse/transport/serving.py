"""What both transports share: how pacs's listeners hand a connection to pynetdicom.

pynetdicom lets a server choose its socketserver class and request handler
(``AE.make_server(server_class=..., request_handler=...)``); pacs's (``server.py``) count
connections per address, hand some to worker processes and wrap DICOM TLS where the connection
is served. Two pieces of that reach past pynetdicom's public API, on either transport, and are
pinned with the fast path's (``fast.UPSTREAM``):

* ``RequestHandler._create_association``: :class:`CountedHandler` is pynetdicom's request
  handler, telling its server when the association's thread ends, so that connections per
  address are counted until they close (``guard.py``); on a DICOM TLS listener it first wraps
  the connection and handshakes, in that thread (``tls.py``). Every accepted socket gets
  TCP_NODELAY: without it a response waits for Nagle's algorithm. It also gives the connection
  an association id for the log lines (``pacs.services.log_lines.ASSOCIATION_ID``), set before
  the association is made: pynetdicom copies the context into the association's threads
  (``_config.PASS_CONTEXTVARS``, set by ``Transport.install``).
* ``ApplicationEntity._servers``: a server made with ``make_server`` (to choose its class) must
  be registered there, as ``start_server`` does, or its ``shutdown`` fails.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler

from pacs.services.log_lines import ASSOCIATION_ID, new_association_id


def register_server(ae: Any, server: Any) -> None:
    """What ``AE.start_server`` does for its own servers."""
    ae._servers.append(server)


def unregister_server(ae: Any, server: Any) -> None:
    """Undo :func:`register_server` for a server that never ran ``serve_forever``."""
    if server in ae._servers:
        ae._servers.remove(server)


class CountedHandler(RequestHandler):
    """pynetdicom's request handler; its server's ``connection_closed(client_address)`` is
    called once the connection's association thread ends."""

    def handle(self) -> None:
        closed: Callable[[Any], None] = getattr(self.server, "connection_closed")  # noqa: B009
        secure = getattr(self.server, "tls", None)  # a tls.TlsAcceptor on a DICOM TLS port
        address = self.client_address
        ASSOCIATION_ID.set(new_association_id())  # this thread serves this connection only
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = None
            if secure is not None:
                peer = secure.handshake(self.request, address)
                if peer is None:  # refused: closed and audited
                    closed(address)
                    return
                self.request = peer.connection
            assoc = self._create_association()
            if peer is not None:
                peer.attach(assoc)
            run = assoc.run

            def run_then_report() -> None:
                try:
                    run()
                finally:
                    closed(address)

            assoc.run = run_then_report  # type: ignore[method-assign]
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": address})
            assoc.start()
        except BaseException:
            closed(address)
            raise
