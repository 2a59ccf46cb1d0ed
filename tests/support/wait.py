"""Polling for a state a background task reaches (a wait, never a timed assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

POLL_TIMEOUT_S = 90.0


def until(what: str, check: Callable[[], Any], timeout: float = POLL_TIMEOUT_S) -> Any:
    """Poll ``check`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout} s: {what}")
