"""What the index raises, in its own words (the services translate them for peers)."""

from __future__ import annotations


class IndexUnavailable(RuntimeError):
    """The database cannot be reached or is locked beyond the busy timeout."""


class IndexNotDurable(IndexUnavailable):
    """The transaction was committed, but the fsync that makes it durable failed."""


class IndexDataError(ValueError):
    """The database refused the values (a constraint or a value it cannot hold)."""
