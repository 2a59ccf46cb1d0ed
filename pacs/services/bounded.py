"""A call that never holds its caller longer than a timeout: for probes and scrapes, whose
answer matters more than the call (a database that stopped answering must not hang the
readiness probe, nor pile up a thread per probe while it stays that way)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedOut(Exception):
    """The call did not end in time (it goes on in its thread)."""


class BoundedCall(Generic[T]):
    """``run()`` in a thread of its own, waited for at most ``timeout`` seconds. One call at a
    time: while one is running (one that timed out, say), the next callers wait for that same
    call, again for at most ``timeout``; none starts another."""

    def __init__(self, name: str, run: Callable[[], T], timeout: float) -> None:
        self.name = name
        self.run = run
        self.timeout = timeout
        self._lock = threading.Lock()
        self._running: Future[T] | None = None

    def start(self) -> Future[T]:
        """The running call's future: a new call, unless the last one is still running."""
        with self._lock:
            if self._running is not None and not self._running.done():
                return self._running
            future: Future[T] = Future()
            self._running = future
        threading.Thread(target=self._call, args=(future,), name=f"bounded-{self.name}",
                         daemon=True).start()
        return future

    def _call(self, future: Future[T]) -> None:
        try:
            future.set_result(self.run())
        except BaseException as error:  # handed to the waiting caller, which decides
            future.set_exception(error)

    def result(self, future: Future[T], timeout: float | None = None) -> T:
        """``future``'s result (raising what the call raised), or :class:`TimedOut`."""
        try:
            return future.result(self.timeout if timeout is None else max(timeout, 0.0))
        except FutureTimeout:
            raise TimedOut(f"{self.name}: no answer in {self.timeout:g} s") from None

    def __call__(self) -> T:
        return self.result(self.start())
