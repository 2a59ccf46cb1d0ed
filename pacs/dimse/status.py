"""The one error → DIMSE status table per service (PS3.4 B.2.3 Storage, C.4.1.1.4 C-FIND,
C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET, F.7.2 MPPS N-CREATE / N-SET, J.3.2 Storage Commitment
N-ACTION; PS3.7 C)."""

from __future__ import annotations

from enum import IntEnum

from pacs.dimse.identifiers import IdentifierMismatch
from pacs.services.errors import (
    AlreadyExists,
    IllegalTransition,
    InvalidInstance,
    InvalidQuery,
    InvalidValue,
    MissingAttribute,
    NotAuthorized,
    NotFound,
    OutOfResources,
    PacsError,
    SopClassMismatch,
    UnknownPeer,
)


class Status(IntEnum):
    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.2: a handler failed unexpectedly
    NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x "Refused: Not Authorized": a denied C-STORE
    PENDING = 0xFF00
    # C-FIND: matches continue, but an optional key of the Identifier was not supported for
    # matching (PS3.4 C.4.1.1.4, K.4.1.1.4)
    PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
    CANCEL = 0xFE00
    OUT_OF_RESOURCES = 0xA700
    UNABLE_TO_CALCULATE_MATCHES = 0xA701
    UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # C-FIND/MOVE/GET: identifier does not match
    SUBOPERATIONS_WARNING = 0xB000
    CANNOT_UNDERSTAND = 0xC000  # C-FIND/MOVE/GET: unable to process
    # C-FIND/MOVE/GET of an AE not allowed them: "Failed: Unable to process" (Cxxx, PS3.4
    # C.4.1.1.4, C.4.2.1.5, C.4.3.1.4), its low bits those of 0x0124 Not Authorized
    QR_NOT_AUTHORIZED = 0xC124


STORE_FAILURES: tuple[tuple[type[PacsError], Status], ...] = (
    (NotAuthorized, Status.NOT_AUTHORIZED),
    (SopClassMismatch, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (OutOfResources, Status.OUT_OF_RESOURCES),
    (InvalidInstance, Status.CANNOT_UNDERSTAND),
)

# IdentifierMismatch (a subclass of InvalidQuery) is matched first: the order matters.
QUERY_FAILURES: tuple[tuple[type[PacsError], Status], ...] = (
    (NotAuthorized, Status.QR_NOT_AUTHORIZED),
    (UnknownPeer, Status.MOVE_DESTINATION_UNKNOWN),
    (OutOfResources, Status.OUT_OF_RESOURCES),
    (NotFound, Status.CANNOT_UNDERSTAND),
    (InvalidQuery, Status.CANNOT_UNDERSTAND),
)


def store_status(error: PacsError) -> Status:
    for kind, status in STORE_FAILURES:
        if isinstance(error, kind):
            return status
    return Status.CANNOT_UNDERSTAND


def query_status(error: PacsError) -> Status:
    """C-FIND, C-MOVE and C-GET failures; a hierarchy violation is 0xA900."""
    if isinstance(error, IdentifierMismatch):
        return Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    for kind, status in QUERY_FAILURES:
        if isinstance(error, kind):
            return status
    return Status.CANNOT_UNDERSTAND


class NStatus(IntEnum):
    """DIMSE-N statuses (PS3.7 C, the general ones PS3.4 F.7.2 and J.3.2 use)."""

    SUCCESS = 0x0000
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    NO_SUCH_SOP_CLASS = 0x0118
    MISSING_ATTRIBUTE = 0x0120
    NO_SUCH_ACTION = 0x0123
    NOT_AUTHORIZED = 0x0124
    RESOURCE_LIMITATION = 0x0213


# Error ID (0000,0903) of an N-SET of a final MPPS: "Performed Procedure Step Object may no
# longer be updated" (PS3.4 F.7.2.2.4), with status 0110H
MAY_NO_LONGER_BE_UPDATED = 0xA710

# AlreadyExists is an InvalidValue, MissingAttribute an InvalidInstance: the order matters.
N_FAILURES: tuple[tuple[type[PacsError], NStatus], ...] = (
    (NotAuthorized, NStatus.NOT_AUTHORIZED),
    (AlreadyExists, NStatus.DUPLICATE_SOP_INSTANCE),
    (NotFound, NStatus.NO_SUCH_SOP_INSTANCE),
    (IllegalTransition, NStatus.PROCESSING_FAILURE),
    (MissingAttribute, NStatus.MISSING_ATTRIBUTE),
    (InvalidValue, NStatus.INVALID_ATTRIBUTE_VALUE),
    (InvalidInstance, NStatus.INVALID_ATTRIBUTE_VALUE),
    (OutOfResources, NStatus.RESOURCE_LIMITATION),
)


def n_status(error: PacsError, *, action: bool = False) -> NStatus:
    """N-CREATE, N-SET and N-ACTION failures; for an N-ACTION (``action``) a bad value is in
    its Action Information, an argument: 0x0115 rather than 0x0106."""
    for kind, status in N_FAILURES:
        if isinstance(error, kind):
            if action and status is NStatus.INVALID_ATTRIBUTE_VALUE:
                return NStatus.INVALID_ARGUMENT_VALUE
            return status
    return NStatus.PROCESSING_FAILURE
