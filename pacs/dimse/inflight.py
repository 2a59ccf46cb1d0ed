"""Counts requests being served, so shutdown can wait for in-flight stores to finish."""

from __future__ import annotations

import threading
from types import TracebackType


class InFlight:
    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> InFlight:
        with self._idle:
            self._count += 1
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def wait_idle(self, timeout: float) -> bool:
        """True when nothing is in flight (waited for at most ``timeout`` seconds)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout)
