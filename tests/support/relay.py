"""A TCP relay on loopback whose outgoing connections come from another loopback address.

DCMTK's tools cannot choose their source address, and Linux picks 127.0.0.1 for any
127.0.0.0/8 destination. A peer that must reach a server from 127.0.0.2 connects to this
relay instead (on 127.0.0.1): each connection is forwarded, bytes unchanged in both
directions, over a connection bound to ``source`` (as a NAT or a TCP proxy would).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    def __init__(self, target: tuple[str, int], *, source: str = "127.0.0.2") -> None:
        self.target = target
        self.source = source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.sources: list[tuple[str, int]] = []  # the local end of each outgoing connection
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                incoming, _ = self._listener.accept()
            except OSError:
                return  # closed
            outgoing = socket.create_connection(self.target, source_address=(self.source, 0))
            for sock in (incoming, outgoing):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.sources.append(outgoing.getsockname()[:2])
                self._sockets += [incoming, outgoing]
            for reader, writer in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=_pump, args=(reader, writer), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


def _pump(reader: socket.socket, writer: socket.socket) -> None:
    """Copy until end of stream, then pass the end on (half-close), as TCP would."""
    with contextlib.suppress(OSError):
        while data := reader.recv(65536):
            writer.sendall(data)
    with contextlib.suppress(OSError):
        writer.shutdown(socket.SHUT_WR)
