"""The HTTP server: uvicorn, telling when it listens, ending gracefully on SIGINT/SIGTERM, with
its connections bounded in number, header size and header time (:class:`GuardedHttpProtocol`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ClassVar, Protocol

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from pacs.http.security import HSTS

log = logging.getLogger("pacs")

_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HttpServer(uvicorn.Server):
    """uvicorn's server, telling when it listens; SIGINT/SIGTERM end it gracefully."""

    def __init__(self, config: uvicorn.Config, *, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started
        self.failed = False

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.should_exit:
            self.failed = True
        else:
            self._started_event.set()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM begin a graceful shutdown; unlike uvicorn's own, the signal is not
        raised again afterwards: ``serve`` still has to stop DIMSE, then exits 0."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _EXIT_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(sig).name)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


MAX_HEADER_BYTES = 64 * 1024
"""Request line plus headers allowed per request; more answers 431 (RFC 6585 5)."""


@dataclass(frozen=True)
class HttpLimits:
    """What one client may cost the HTTP listener before it is answered and closed."""

    header_timeout: float = 5.0  # seconds for a request line and headers
    max_connections: int = 1000
    max_connections_per_host: int = 100
    max_header_bytes: int = MAX_HEADER_BYTES


class RefusalHook(Protocol):
    """Told of each request the listener refuses itself (for the audit trail); never blocks."""

    def __call__(self, status: int, reason: str, *, client: str | None) -> None: ...


@dataclass
class _Ledger:
    """Open connections in total and per client address; touched on the event loop only."""

    total: int = 0
    per_host: Counter[str] = field(default_factory=Counter)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits uvicorn does not have: request line plus
    headers over :attr:`HttpLimits.max_header_bytes` answer 431; headers not complete within
    :attr:`HttpLimits.header_timeout` (slowloris) close the connection (408 when some bytes
    came); connections beyond the caps answer 503 before a byte is read. Use
    :func:`guarded_protocol` to get one configured.

    The header bytes are counted as they arrive, before the parser buffers them (httptools
    keeps a header value whole until it ends): a chunk crossing the limit is fed up to the
    limit first, so a body arriving with the headers in one read is never counted."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    refused: ClassVar[RefusalHook | None] = None
    ledger: ClassVar[_Ledger] = _Ledger()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._host: str | None = None  # counted in the ledger under this address

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        ledger, limits = self.ledger, self.limits
        if ledger.total >= limits.max_connections:
            self._refuse(503, "too many connections", retry_after=True)
            return
        if ledger.per_host[host] >= limits.max_connections_per_host:
            self._refuse(503, "too many connections from this address", retry_after=True)
            return
        ledger.total += 1
        ledger.per_host[host] += 1
        self._host = host
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._host is not None:
            self.ledger.total -= 1
            self.ledger.per_host[self._host] -= 1
            if not self.ledger.per_host[self._host]:
                del self.ledger.per_host[self._host]
            self._host = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """A graceful shutdown closes idle connections at once and lets requests under way
        finish. Under TLS, asyncio's close of a connection waits for the client's close_notify
        up to 30 s (``ssl_shutdown_timeout``), which an idle keep-alive client that is not
        reading never sends: such a connection is aborted instead (no request is under way
        on it, nothing is lost), so a stop does not wait half a minute per idle client."""
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport.get_extra_info("ssl_object") is not None:
            self.transport.abort()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            room = self.limits.max_header_bytes - self._header_bytes
            if len(data) > room:
                if room > 0:
                    super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if self._awaiting_headers:
                    self._refuse(431, "request line and headers over "
                                 f"{self.limits.max_header_bytes // 1024} KiB")
                    return
                data = data[room:]
            else:
                self._header_bytes += len(data)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True  # what comes next is the next request's head
        self._header_bytes = 0
        if self.cycle.response_complete and not self.transport.is_closing():
            self._arm_header_timer()  # answered before its body ended (a 413, say)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle again (uvicorn armed its keep-alive timer, which the next byte cancels):
        # the next request's headers have the same time as the first one's.
        if self._awaiting_headers and self.timeout_keep_alive_task is not None:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                  self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers:
            return
        if self._header_bytes:
            self._refuse(408, "request headers not complete in "
                         f"{self.limits.header_timeout:g} s")
        else:
            self.transport.close()  # an idle connection: nothing to answer

    def _refuse(self, status: int, reason: str, *, retry_after: bool = False) -> None:
        """Answer ``status`` with ``reason`` and close, whatever the parser's state."""
        body = reason.encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        if retry_after:
            head.append(b"retry-after: 1\r\n")
        if self.scheme == "https":  # on every answer over TLS (RFC 6797), these too
            head += [HSTS[0].encode(), b": ", HSTS[1].encode(), b"\r\n"]
        head += [b"content-type: text/plain; charset=utf-8\r\n",
                 b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"x-content-type-options: nosniff\r\n",
                 b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()
        self._cancel_header_timer()
        log.debug("HTTP %d to %s: %s", status, self.client, reason)
        if self.refused is not None:
            self.refused(status, reason, client=self.client[0] if self.client else None)


def guarded_protocol(limits: HttpLimits, refused: RefusalHook | None) -> type[HttpToolsProtocol]:
    """A :class:`GuardedHttpProtocol` class with these limits and its own connection ledger,
    for ``uvicorn.Config(http=...)``."""

    class Configured(GuardedHttpProtocol):
        pass

    Configured.limits = limits
    Configured.refused = refused
    Configured.ledger = _Ledger()
    return Configured
