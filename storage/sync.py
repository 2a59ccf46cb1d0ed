"""One durability mechanism for the blob store and the index: syncs shared by their callers.

A caller that needs everything it wrote so far on disk asks for a sync that *starts after* its
request, and waits for it. One sync runs at a time; the next one starts as soon as the last
ends if anybody asked meanwhile, so concurrent callers share one device flush instead of
queueing for one each. :meth:`SharedSync.request` starts it in a background thread (the caller
works meanwhile); :meth:`SharedSync.wait` runs it on the caller's thread when none is running
(no hand-off for a caller that has nothing else to do).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, cast

_KEPT_ERRORS = 64  # a waiter never needs a sync more than this many behind the newest


class SharedSync:
    """Runs ``sync`` (which returns the OSError it met, or None) for its callers."""

    def __init__(self, sync: Callable[[], OSError | None], name: str) -> None:
        self._sync = sync
        self._name = name
        lock = threading.Lock()
        self._done = threading.Condition(lock)  # a sync finished (callers wait on it)
        self._work = threading.Condition(lock)  # a sync is wanted (the thread waits on it)
        self._wanted = 0  # the number of the sync the latest request needs
        self._started = 0
        self._finished = 0
        self._errors: dict[int, OSError] = {}
        self._thread: threading.Thread | None = None

    def request(self) -> Callable[[], None]:
        """Ask for a sync; the returned callable waits for it (and raises its OSError, or that
        of any sync after it)."""
        with self._done:
            needed = self._started + 1  # a sync that starts after this call
            self._wanted = max(self._wanted, needed)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._work.notify()
        return lambda: self._wait(needed)

    def wait(self) -> None:
        """Sync, and return once a sync that started after this call has ended."""
        self.later()()

    def later(self) -> Callable[[], None]:
        """Ask for nothing yet; the returned callable waits for a sync that started after
        this call, running it on the caller's thread when none is running. What a later
        :meth:`wait` (or request) of another caller syncs is shared: a caller that wrote
        something, then did other work that ends with a sync of the same file system (an
        index commit on it), finds its own write already covered."""
        with self._done:
            needed = self._started + 1
        return lambda: self._wait_or_run(needed)

    def _wait_or_run(self, needed: int) -> None:
        with self._done:
            self._wanted = max(self._wanted, needed)
            while self._finished < needed:
                if self._started == self._finished:  # none running: run it here
                    self._run_one()
                else:
                    self._done.wait()
        self._raise(needed)

    def _wait(self, needed: int) -> None:
        with self._done:
            while self._finished < needed:
                self._done.wait()
        self._raise(needed)

    def _raise(self, needed: int) -> None:
        with self._done:
            error = next((e for n, e in self._errors.items() if n >= needed), None)
        if error is not None:
            raise error

    def _run(self) -> None:
        with self._done:
            while True:
                # wanted, and none running (a caller of wait() may be running one)
                while self._wanted <= self._started or self._started > self._finished:
                    self._work.wait()
                self._run_one()

    def _run_one(self) -> None:
        """Run the next sync; called and returns with the lock held, releases it meanwhile."""
        self._started += 1
        number = self._started
        self._done.release()
        try:
            error = self._sync()
        except Exception as unexpected:  # every waiter must get an answer
            error = OSError(f"{type(unexpected).__name__}: {unexpected}")
        finally:
            self._done.acquire()
        self._finished = number
        self._errors = {n: e for n, e in self._errors.items() if n > number - _KEPT_ERRORS}
        if error is not None:
            self._errors[number] = error
        self._done.notify_all()
        self._work.notify()  # requests made meanwhile: the thread starts the next one


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Start writing ``count`` bytes of the file ``fd`` from ``offset`` to disk, without
    waiting for them (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the sync that makes
    the file durable later has that much less to write. Does nothing where the call is missing;
    an error is left to that sync, which reports it."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, count, _SYNC_FILE_RANGE_WRITE)


def libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """The C library's ``name`` (returning an int, errno kept for ``ctypes.get_errno``), or
    None where there is no such call (not Linux)."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE = libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)
