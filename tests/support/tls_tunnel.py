"""A TLS client tunnel for DCMTK tools that cannot speak TLS themselves.

Debian's DCMTK 3.6.7 builds ``echoscu``, ``storescu``, ``findscu`` and ``storescp`` with
``+tls``, but not ``getscu`` or ``movescu``. Such a tool connects in plain TCP to the tunnel's
loopback port; the tunnel opens a TLS connection (Python's ``ssl``, with the client certificate
of ``context``) to the server and copies bytes both ways, one connection at a time, like
``stunnel`` in client mode.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from types import TracebackType


class TlsTunnel:
    """``with TlsTunnel(port, context) as local_port:`` plain TCP on ``local_port`` is carried
    over TLS to ``127.0.0.1:port``."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, name="tls-tunnel", daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> int:
        self._thread.start()
        return int(self._listener.getsockname()[1])

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                plain, _ = self._listener.accept()
            except OSError:
                return
            with plain, socket.create_connection(("127.0.0.1", self.port), timeout=30) as raw, \
                    self.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                _pump(plain, tls)


def _pump(plain: socket.socket, tls: ssl.SSLSocket) -> None:
    """Copy bytes both ways until either side closes."""
    plain.setblocking(False)
    tls.setblocking(False)
    while True:
        ready = [tls] if tls.pending() else select.select([plain, tls], [], [], 30)[0]
        if not ready:
            return
        for source, sink in ((plain, tls), (tls, plain)):
            if source not in ready:
                continue
            try:
                data = source.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:
                return
            if not data:
                return
            sink.setblocking(True)
            sink.sendall(data)
            sink.setblocking(False)
