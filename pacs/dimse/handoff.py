"""Spreading associations over processes: one listens, every process serves.

pynetdicom runs each association in a thread, and the GIL keeps a process on one core; storing
is CPU-bound (PDU decoding, header parsing, SQL). The listening process therefore hands each
accepted connection, round robin, to itself or to a worker process: the socket's file
descriptor travels over a Unix socket pair (SCM_RIGHTS), and the worker serves the association
as if it had accepted it. A connection to the DICOM TLS port travels raw too, marked as such:
the process that serves it does the TLS handshake (``tls.py``).

The listening process counts the connections of each source address (``guard.py``) wherever
they are served: a worker sends back the address of every connection it has finished
serving, and when a worker's channel closes (it stopped or died), its connections are closed
too.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

_MAX_MESSAGE = 4096


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(listener's end, worker's end); SEQPACKET keeps one message per connection."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Dispatcher:
    """Round robin over this process (``None``) and the workers' channels."""

    def __init__(self, channels: list[socket.socket]) -> None:
        self._channels = list(channels)
        self._targets: itertools.cycle[socket.socket | None] = itertools.cycle(
            [None, *channels]
        )
        self._held: dict[socket.socket, Counter[str]] = {
            channel: Counter() for channel in channels
        }
        self._lock = threading.Lock()

    def start(self, released: Callable[[str], None]) -> None:
        """Read the workers' reports of closed connections: ``released(host)`` for each, and
        for each connection a worker still held when its channel closed."""
        for channel in self._channels:
            threading.Thread(target=self._read_reports, args=(channel, released),
                             name="dimse-handoff-reports", daemon=True).start()

    def hand_off(self, connection: socket.socket, address: tuple[str, int], *,
                 tls: bool = False) -> bool:
        """True when a worker took the connection (the caller closes its own copy); ``tls``:
        it came to the DICOM TLS port (not yet wrapped)."""
        host = str(address[0])
        with self._lock:
            target = next(self._targets)
            if target is None:
                return False
            self._held[target][host] += 1
        message = json.dumps([host, address[1], tls]).encode()
        try:
            socket.send_fds(target, [message], [connection.fileno()])
        except OSError as error:  # the worker is gone: serve it here
            log.warning("hand-off to a DIMSE worker failed (%s); serving locally", error)
            self._forget(target, host)
            return False
        return True

    def _forget(self, channel: socket.socket, host: str) -> bool:
        with self._lock:
            held = self._held[channel]
            if held[host] <= 0:
                return False
            held[host] -= 1
            if not held[host]:
                del held[host]
            return True

    def _read_reports(self, channel: socket.socket, released: Callable[[str], None]) -> None:
        while True:
            try:
                message = channel.recv(_MAX_MESSAGE)
                host = str(json.loads(message)) if message else None
            except (OSError, ValueError):
                host = None
            if host is None:
                break
            if self._forget(channel, host):
                released(host)
        with self._lock:
            left, self._held[channel] = self._held[channel], Counter()
        for host, count in left.items():
            for _ in range(count):
                released(host)


def receive_forever(
    channel: socket.socket, adopt: Callable[[socket.socket, tuple[str, int], bool], None]
) -> None:
    """In a worker: ``adopt(connection, address, tls)`` every connection sent over ``channel``
    until it closes."""
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, _MAX_MESSAGE, 1)
        except OSError:
            return
        if not message or not fds:
            return
        host, port, tls = json.loads(message)
        adopt(socket.socket(fileno=fds[0]), (str(host), int(port)), bool(tls))


def report_closed(channel: socket.socket, host: str) -> None:
    """In a worker: tell the listening process a connection from ``host`` has closed."""
    try:
        channel.send(json.dumps(host).encode())
    except OSError:
        pass  # the listening process is gone or stopping: it counts nothing any more


def stop(channel: socket.socket) -> None:
    """Close the listener's end of a channel, waking its reader (``close`` alone would not
    while another thread is in ``recv`` on it)."""
    try:
        channel.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    channel.close()
