"""The one error → DIMSE status table (PS3.4 B.2.3 Storage statuses, PS3.7 C)."""

from __future__ import annotations

from enum import IntEnum

from pacs.services.errors import (
    InvalidInstance,
    OutOfResources,
    PacsError,
    SopClassMismatch,
)


class Status(IntEnum):
    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


STORE_FAILURES: tuple[tuple[type[PacsError], Status], ...] = (
    (SopClassMismatch, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (OutOfResources, Status.OUT_OF_RESOURCES),
    (InvalidInstance, Status.CANNOT_UNDERSTAND),
)


def store_status(error: PacsError) -> Status:
    for kind, status in STORE_FAILURES:
        if isinstance(error, kind):
            return status
    return Status.CANNOT_UNDERSTAND
