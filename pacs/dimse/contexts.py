"""Presentation contexts the SCP accepts: every storage SOP class pynetdicom knows × every
transfer syntax pydicom knows, plus Verification.

Order of transfer syntaxes is our preference when a requestor offers several in one context
(PS3.8 9.3.2.2): lossless first (uncompressed, deflated, lossless codecs), lossy last, so an
SCU able to transcode is never invited to compress lossily on our behalf.

pynetdicom deep-copies the acceptor's contexts for every association (34 ms for this set,
perf-notes). The contexts are never mutated during negotiation (it builds new result
objects), so :class:`SharedContexts` makes that copy a shallow one.
"""

from __future__ import annotations

from typing import Any

from pydicom import uid
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext

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
    """Verification, Q/R (FIND, MOVE, GET) and every storage SOP class.

    Storage contexts accept SCP/SCU role selection (PS3.7 D.3.3.4) either way: a C-GET
    requestor proposes itself as the Storage SCP, so that we send on its association.
    """
    syntaxes = transfer_syntaxes()
    contexts = [build_context(VERIFICATION, syntaxes[:4])]
    # identifiers in little endian only: the lean encoders (encoding.py) write those
    contexts += [build_context(sop_class, syntaxes[:2]) for sop_class in QUERY_RETRIEVE]
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
