"""The MLLP listener (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5.1 Appendix C.4): each
message travels as ``0x0B`` + message + ``0x1C 0x0D``; every message is answered on the same
connection before the next is read, and a connection may carry any number of them.

What a peer can cost is bounded before it costs it:

* a frame longer than ``max_message_bytes`` is never held whole: once the buffer passes the
  limit the peer gets an AR (built from the header read so far) and the connection is
  closed (the rest of the frame cannot be told apart from a next message);
* a connection that sends nothing for ``read_timeout`` seconds, or takes longer than that
  for one frame, is closed: a stalled peer never holds a thread for ever;
* at most ``max_connections`` connections are served at once (one thread each); one more is
  closed at once; bytes outside a frame are dropped, and closed on once they pass the limit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
_RECV = 65536
_ACCEPT_POLL_S = 0.5  # how soon a stop is noticed by the accepting thread


class MessageHandler(Protocol):
    """What the listener calls: the answer to a message, and to a frame too large to read."""

    def message(self, data: bytes, address: str) -> bytes: ...

    def too_large(self, head: bytes, address: str, limit: int) -> bytes: ...


def frame(payload: bytes) -> bytes:
    """``payload`` in an MLLP block."""
    return START_BLOCK + payload + END_BLOCK


class MllpServer:
    """Accepts MLLP connections on ``host:port`` (port 0: a free one, see :attr:`port`) and
    serves each in a thread of its own (see the module's docstring for the bounds)."""

    def __init__(self, *, host: str, port: int, handler: MessageHandler,
                 max_message_bytes: int = 1 << 20, read_timeout: float = 30.0,
                 max_connections: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.requested_port = port
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.clock = clock
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._listener is None:
            return self.requested_port
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Bind and listen (``OSError`` if the port cannot be had), then accept in a
        thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host.strip("[]"), self.requested_port),
                                        family=family)
        listener.settimeout(_ACCEPT_POLL_S)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name="hl7-accept", daemon=True)
        self._acceptor.start()

    def listening(self) -> bool:
        return self._acceptor is not None and self._acceptor.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close the open connections (a message being handled is answered
        first if it can be) and wait for the threads."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for connection in list(self._open):
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    # -- connections -------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as error:
                if not self._stopping.is_set():
                    log.warning("HL7 listener: accept failed: %s", error)
                continue
            address = str(peer[0])
            if not self._slots.acquire(blocking=False):
                log.warning("HL7: %d connections open already; closing the one from %s",
                            self.max_connections, address)
                connection.close()
                continue
            with self._lock:
                self._open.add(connection)
            threading.Thread(target=self._serve, args=(connection, address),
                             name=f"hl7-{address}", daemon=True).start()

    def _serve(self, connection: socket.socket, address: str) -> None:
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._converse(connection, address)
        except TimeoutError:
            log.info("HL7: closing the connection from %s: nothing received for %g s",
                     address, self.read_timeout)
        except OSError as error:
            log.info("HL7: connection from %s ended: %s", address, error)
        finally:
            with self._lock:
                self._open.discard(connection)
            connection.close()
            self._slots.release()

    def _converse(self, connection: socket.socket, address: str) -> None:
        """Read frames and answer each until the peer closes, stalls or oversteps."""
        buffer = bytearray()
        started: float | None = None  # when the frame under way began
        while not self._stopping.is_set():
            wait = self.read_timeout
            if started is not None:
                wait = self.read_timeout - (self.clock() - started)
                if wait <= 0:
                    log.info("HL7: closing the connection from %s: a message not complete "
                             "in %g s", address, self.read_timeout)
                    return
            connection.settimeout(wait)
            chunk = connection.recv(_RECV)
            if not chunk:
                return
            buffer += chunk
            while True:
                if started is None:
                    begin = buffer.find(START_BLOCK)
                    if begin < 0:
                        if len(buffer) > self.max_message_bytes:
                            log.info("HL7: closing the connection from %s: %d bytes outside "
                                     "an MLLP block", address, len(buffer))
                            return
                        break
                    del buffer[:begin + 1]
                    started = self.clock()
                end = buffer.find(END_BLOCK)
                if end < 0:
                    if len(buffer) > self.max_message_bytes:
                        connection.settimeout(self.read_timeout)
                        connection.sendall(frame(self.handler.too_large(
                            bytes(buffer[:4096]), address, self.max_message_bytes)))
                        log.warning("HL7: a message from %s is over %d bytes: refused (AR), "
                                    "connection closed", address, self.max_message_bytes)
                        return
                    break
                message = bytes(buffer[:end])
                del buffer[:end + len(END_BLOCK)]
                started = None
                answer = self.handler.message(message, address)
                connection.settimeout(self.read_timeout)
                connection.sendall(frame(answer))
