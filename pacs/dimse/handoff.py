"""Spreading associations over processes: one listens, every process serves.

pynetdicom runs each association in a thread, and the GIL keeps a process on one core; storing
is CPU-bound (PDU decoding, header parsing, SQL). The listening process therefore hands each
accepted connection, round robin, to itself or to a worker process: the socket's file
descriptor travels over a Unix socket pair (SCM_RIGHTS), and the worker serves the association
as if it had accepted it.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_MAX_MESSAGE = 4096


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(listener's end, worker's end); SEQPACKET keeps one message per connection."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Dispatcher:
    """Round robin over this process (``None``) and the workers' channels."""

    def __init__(self, channels: list[socket.socket]) -> None:
        self._targets: itertools.cycle[socket.socket | None] = itertools.cycle(
            [None, *channels]
        )
        self._lock = threading.Lock()

    def hand_off(self, connection: socket.socket, address: tuple[str, int]) -> bool:
        """True when a worker took the connection (the caller closes its own copy)."""
        with self._lock:
            target = next(self._targets)
        if target is None:
            return False
        message = json.dumps([address[0], address[1]]).encode()
        try:
            socket.send_fds(target, [message], [connection.fileno()])
        except OSError as error:  # the worker is gone: serve it here
            log.warning("hand-off to a DIMSE worker failed (%s); serving locally", error)
            return False
        return True


def receive_forever(
    channel: socket.socket, adopt: Callable[[socket.socket, tuple[str, int]], None]
) -> None:
    """In a worker: adopt every connection sent over ``channel`` until it closes."""
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, _MAX_MESSAGE, 1)
        except OSError:
            return
        if not message or not fds:
            return
        host, port = json.loads(message)
        adopt(socket.socket(fileno=fds[0]), (str(host), int(port)))
