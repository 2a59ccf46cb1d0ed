"""The blob store's failures in the services' words: an object store that cannot be reached
is :class:`OutOfResources` (0xA700 on C-STORE, 503 on HTTP: try again later), its message
naming the problem and never the endpoint (which the store logged)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pacs.services import metrics
from pacs.services.errors import OutOfResources
from storage.blob_store import BlobStoreUnavailable

log = logging.getLogger(__name__)

UNAVAILABLE = "the blob store is unavailable"


@contextmanager
def blob_store_errors(operation: str = "read") -> Iterator[None]:
    """Raise :class:`BlobStoreUnavailable` met in the block as :class:`OutOfResources`,
    counted in the metrics as a failed ``operation`` (:func:`metrics.blob_error`)."""
    try:
        yield
    except BlobStoreUnavailable as error:
        metrics.blob_error(operation)
        log.error("%s: %s", UNAVAILABLE, error)
        raise OutOfResources(UNAVAILABLE) from error
