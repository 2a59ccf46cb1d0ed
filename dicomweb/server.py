"""The HTTP server: uvicorn, telling when it listens, ending gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

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
