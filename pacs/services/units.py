"""Units of work as the services use them: the index's failures told in the services' words."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pacs.services.errors import InvalidQuery, OutOfResources
from storage.index import Index, IndexDataError, IndexUnavailable, Repository

log = logging.getLogger(__name__)


@contextmanager
def unit_of_work(index: Index, *, write: bool = False) -> Iterator[Repository]:
    """``index.unit_of_work``: the index unreachable is :class:`OutOfResources` (try again
    later), a value it refuses :class:`InvalidQuery`."""
    try:
        with index.unit_of_work(write=write) as repository:
            yield repository
    except IndexUnavailable as error:
        log.error("the index is unavailable: %s", error)
        raise OutOfResources("the index is unavailable: try again later") from error
    except IndexDataError as error:
        log.warning("the index refused a change: %s", error)
        raise InvalidQuery("the index cannot hold a value of this change") from error
