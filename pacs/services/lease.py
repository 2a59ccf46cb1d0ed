"""Keeping a lease while its work runs: the renewal thread of a claimed routing job, stability
check or purge.

Servers sharing one index claim background work row by row and hold each row under a lease
(the holder's node id and an expiry, in the row). The holder renews it every third of its
length while it works; a holder that died stops renewing, so its lease runs out and another
server claims the row. A holder that stalled past its lease may find the row taken: the
renewal reports that (:attr:`Renewal.lost`), and the holder's last write, conditional on still
holding the row, records nothing over the new holder's.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from storage.index import Index, IndexUnavailable, Repository

log = logging.getLogger(__name__)

Renew = Callable[[Repository, dt.datetime], bool]
"""Extends the lease to the given time in a write transaction; False once it is not ours."""


class Renewal:
    """Renews a lease every third of ``lease`` on a daemon thread while the ``with`` block
    runs (the block is the work: it never waits for a renewal)."""

    def __init__(self, index: Index, lease: dt.timedelta, renew: Renew, what: str) -> None:
        self._index = index
        self._lease = lease
        self._renew = renew
        self._what = what  # for the log: "routing job 7", "stability of 1.2.3"
        self._done = threading.Event()
        self.lost = threading.Event()
        """Set when a renewal found the lease taken by another server."""
        self._thread = threading.Thread(target=self._run, name=f"lease {what}"[:60],
                                        daemon=True)

    def __enter__(self) -> Renewal:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._lease.total_seconds() / 3):
            until = dt.datetime.now(dt.UTC) + self._lease
            try:
                with self._index.unit_of_work(write=True) as repository:
                    held = self._renew(repository, until)
            except IndexUnavailable as error:  # the next round tries again
                log.warning("%s: lease not renewed: %s", self._what, error)
                continue
            if not held:
                log.warning("%s: lease lost to another server", self._what)
                self.lost.set()
                return
