"""Presentation contexts the SCP accepts: every storage SOP class pynetdicom knows × every
transfer syntax pydicom knows, plus Verification.

Order of transfer syntaxes is our preference when a requestor offers several in one context
(PS3.8 9.3.2.2): lossless first (uncompressed, deflated, lossless codecs), lossy last, so an
SCU able to transcode is never invited to compress lossily on our behalf.

pynetdicom deep-copies the acceptor's contexts for every association (34 ms for this set,
perf-notes). The contexts are never mutated during negotiation (it builds new result
objects), so :class:`SharedContexts` makes that copy a shallow one.

Storage SOP classes pynetdicom does not list (retired ones such as Ultrasound Image Storage
``1.2.840.10008.5.1.4.1.1.6``, private ones, ones newer than its tables) are accepted when a
requestor proposes them (:class:`UnknownStorageClasses`, the ``accept_unknown_sop_classes``
setting, as Orthanc's ``UnknownSopClassAccepted``): contexts for them are added to one
association's supported list just before it is negotiated, so the shared list stays small;
their C-STORE requests go to the same Storage SCP as any other (``qr.install``).
pynetdicom's own ``_config.UNRESTRICTED_STORAGE_SERVICE`` is not used: it accepts the first
transfer syntax proposed, lossy or unknown alike, for every storage context.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom import uid
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from pacs.services.commitment import STORAGE_COMMITMENT_PUSH
from pacs.services.mpps import MPPS_SOP_CLASS

VERIFICATION = "1.2.840.10008.1.1"  # Verification SOP Class, PS3.4 A.4

LOSSLESS_FIRST: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.RLELossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.JPEG2000MCLossless,
)


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom knows, lossless ones first."""
    known = [str(ts) for ts in uid.AllTransferSyntaxes]
    return [ts for ts in LOSSLESS_FIRST if ts in known] + [
        ts for ts in known if ts not in LOSSLESS_FIRST
    ]


class SharedContexts(list[PresentationContext]):
    """A context list whose deep copy is shallow: the items are read-only after start-up."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


def scp_contexts() -> SharedContexts:
    """Verification, Q/R (FIND, MOVE, GET), Modality Worklist FIND, MPPS, Storage Commitment
    Push Model and every storage SOP class.

    MPPS (PS3.4 F.7) and Storage Commitment (J.3) in either little endian; the commitment
    context accepts role selection either way too: the N-EVENT-REPORT goes back on the
    requestor's association whatever it proposed (``commitment.py``).

    Storage contexts accept SCP/SCU role selection (PS3.7 D.3.3.4) either way: a C-GET
    requestor proposes itself as the Storage SCP, so that we send on its association.
    """
    syntaxes = transfer_syntaxes()
    contexts = [build_context(VERIFICATION, syntaxes[:4])]
    # identifiers in little endian only: the lean encoders (encoding.py) write those
    contexts += [build_context(sop_class, syntaxes[:2])
                 for sop_class in (*QUERY_RETRIEVE, *WORKLIST)]
    for sop_class in N_SERVICES:
        context = build_context(sop_class, syntaxes[:2])
        context.scu_role = context.scp_role = True  # (only the commitment's may be proposed)
        contexts.append(context)
    for cx in AllStoragePresentationContexts:
        context = build_context(str(cx.abstract_syntax), syntaxes)
        context.scu_role = True
        context.scp_role = True
        contexts.append(context)
    return SharedContexts(contexts)


# Query/Retrieve SOP classes, PS3.4 C.6.1.3 and C.6.2.3 (identifiers in either little endian).
QUERY_RETRIEVE = (
    "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # Patient Root GET
    "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root MOVE
    "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root GET
)

WORKLIST_FIND = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND, K.6.1.3
# Basic Worklist Management SOP classes served (PS3.4 K.6; identifiers in little endian).
WORKLIST = (WORKLIST_FIND,)
# The DIMSE-N services: MPPS (PS3.4 F.7.3) and Storage Commitment Push Model (J.3.5).
N_SERVICES = (MPPS_SOP_CLASS, STORAGE_COMMITMENT_PUSH)


# -- storage SOP classes pynetdicom does not list --------------------------------------------
_STANDARD_ROOT = "1.2.840.10008."
_STORAGE_ROOT = "1.2.840.10008.5.1.4."  # PS3.6 Annex A: where the storage SOP classes live
_STORAGE_NAME = re.compile(r"\bStorage\b")
_NOT_STORAGE_NAME = re.compile(r"Commitment|Directory")  # named "Storage", not stored
_VALID_UID = re.compile(uid.RE_VALID_UID)


def is_storage_class(sop_class_uid: str) -> bool:
    """Whether a requestor may store instances of ``sop_class_uid`` with us: a private SOP
    class (not under the standard's root), a standard one that pydicom's dictionary names a
    Storage SOP Class (retired ones included), or a standard one under the storage classes'
    root that pydicom does not know yet. Standard UIDs of other kinds (transfer syntaxes,
    worklist, MPPS, storage commitment, ...) are not."""
    if len(sop_class_uid) > 64 or not _VALID_UID.match(sop_class_uid):
        return False
    if not sop_class_uid.startswith(_STANDARD_ROOT):
        return True
    known = uid.UID(sop_class_uid)
    if not known.type:  # not in pydicom's dictionary
        return sop_class_uid.startswith(_STORAGE_ROOT)
    return (known.type == "SOP Class" and _STORAGE_NAME.search(known.name) is not None
            and _NOT_STORAGE_NAME.search(known.name) is None)


def describe_sop_class(sop_class_uid: str) -> str:
    """``uid (name)`` for a log line: the name from pydicom's dictionary, "retired" or
    "private" when it is one."""
    if not _VALID_UID.match(sop_class_uid):
        return f"{sop_class_uid!r} (not a valid UID)"
    known = uid.UID(sop_class_uid)
    if not known.type:
        kind = "private" if not sop_class_uid.startswith(_STANDARD_ROOT) else "unknown"
        return f"{sop_class_uid} ({kind} SOP class)"
    return f"{sop_class_uid} ({known.name}{', retired' if known.is_retired else ''})"


class UnknownStorageClasses:
    """An ``EVT_REQUESTED`` handler: before an association is negotiated, adds a storage
    context (every transfer syntax, lossless first; either role) for each proposed storage
    SOP class that the shared list lacks (:func:`is_storage_class`).

    ``accept_stores``: accept such classes for C-STORE from the requestor (the setting
    ``accept_unknown_sop_classes``). Without it, only contexts a C-GET requestor proposes for
    our sub-operations are added (SCP role for itself, not SCU: PS3.7 D.3.3.4), so instances
    stored some other way (``pacs import``) can still be retrieved.
    """

    def __init__(self, supported: Sequence[PresentationContext], *, accept_stores: bool) -> None:
        self.known = frozenset(str(cx.abstract_syntax) for cx in supported)
        self.accept_stores = accept_stores
        self.syntaxes = transfer_syntaxes()

    def __call__(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        if request is None:
            return
        proposed = request.presentation_context_definition_list or []
        roles = {str(item.sop_class_uid): (item.scu_role, item.scp_role)
                 for item in assoc.requestor.role_selection.values()}
        extra = self.contexts_for(
            (str(cx.abstract_syntax) for cx in proposed), roles)
        if extra:
            assoc.acceptor.supported_contexts = SharedContexts(
                [*assoc.acceptor.supported_contexts, *extra])

    def contexts_for(
        self, proposed: Iterable[str], roles: dict[str, tuple[bool | None, bool | None]]
    ) -> list[PresentationContext]:
        """The contexts to add for ``proposed`` abstract syntaxes (at most 128 in one
        A-ASSOCIATE-RQ: context IDs are odd numbers up to 255, PS3.8 9.3.2.2)."""
        extra: list[PresentationContext] = []
        for sop_class in dict.fromkeys(proposed):
            if sop_class in self.known or not is_storage_class(sop_class):
                continue
            scu, scp = roles.get(sop_class, (None, None))
            if not self.accept_stores and not (scp and not scu):
                continue
            context = build_context(sop_class, self.syntaxes)
            context.scu_role = True
            context.scp_role = True
            extra.append(context)
            if len(extra) >= 128:
                break
        return extra


def missing_context(assoc: Any, sop_class_uid: str, *, peer_is_requestor: bool) -> str:
    """Why an instance of ``sop_class_uid`` cannot be sent on ``assoc``: no presentation
    context for its SOP class was accepted (a C-MOVE destination or routing peer refused it) or
    proposed (a C-GET requestor offered no storage context with the SCP role for it). Names
    the real cause, where "no transfer syntax fits" would mislead."""
    described = describe_sop_class(sop_class_uid)
    if peer_is_requestor:
        peer = str(assoc.requestor.ae_title).strip()
        return (f"the C-GET requestor {peer} proposed no presentation context with the SCP "
                f"role for SOP class {described}, so it cannot receive it")
    peer = str(assoc.acceptor.ae_title).strip()
    refusals = sorted({str(cx.status) for cx in assoc.rejected_contexts
                       if str(cx.abstract_syntax) == sop_class_uid})
    why = f" ({', '.join(refusals).lower()})" if refusals else ""
    return f"{peer} accepted no presentation context for SOP class {described}{why}"
