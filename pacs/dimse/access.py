"""DIMSE access control (``--dimse-access registered``): who may associate, and what each
registered AE may ask for. Without it (``any``) none of this runs: every calling AE may do
everything and the called AE title is not checked.

The association is decided on its A-ASSOCIATE-RQ, before any presentation context is
negotiated (pynetdicom's ``EVT_REQUESTED``, in the thread that serves the association, in
whichever process serves it), by one look-up in the AE registry's in-process snapshot
(``pacs.services.ae_registry``: a dict access, the index read at most every few seconds).
A refusal is an A-ASSOCIATE-RJ (PS3.8 9.3.4), rejected-permanent (1), source service-user (1):

* reason 3, calling AE title not recognised: a calling AE title the registry does not know,
  or a registered one calling from an address not listed for it;
* reason 7, called AE title not recognised: the called AE title is not this server's. An
  unknown caller is told reason 3 first, and so learns nothing of the called title.

A registry that cannot be read at all (no snapshot yet, the index down) answers
rejected-transient (2), service-provider presentation (3), temporary congestion (1).

Each admitted association carries the services its AE is allowed, as they were when it was
admitted; each C-STORE, C-FIND, C-MOVE and C-GET is checked against them
(:meth:`AccessControl.denial`), and a denied one is answered with a failure status and an Error
Comment ("calling AE 'CT1' may not C-GET", ``status.py``: 0x0124 for C-STORE, 0xC124 for the
Q/R services) before anything else is done: no query, no sub-operation. C-ECHO is always
allowed.

Rejections and denials go to the audit trail through ``guard.RefusalAudit`` (counted per actor,
action and reason, one row per kind at each flush: a flood costs a counter each), as actions
``association-rejected`` and ``permission-denied`` with the actor ``dimse:AE@address``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pynetdicom import evt
from pynetdicom.events import Event

from pacs.dimse.guard import RefusalAudit
from pacs.services.ae_registry import Admission, Service
from pacs.services.errors import NotAuthorized, OutOfResources

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ result, source and reason (PS3.8 9.3.4)
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = 0x03, 0x07
TEMPORARY_CONGESTION = 0x01

PERMISSION_DENIED = "permission-denied"  # the audit action of a denied request
CALLED_AE_REASON = "called AE title not recognised"
REGISTRY_UNREADABLE = "the AE registry cannot be read"
CHECK_FAILED = "the access check failed"

_GRANTED = "_pacs_granted"  # on a pynetdicom Association: the services of its AE
_REJECTION = "_pacs_rejection"  # on a pynetdicom Association: why it was rejected


class Registry(Protocol):
    def admit(self, calling_ae_title: str, address: str) -> Admission: ...


@dataclass(frozen=True)
class Rejection:
    """Why an association was rejected, for the log and the audit trail."""

    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def rejection(assoc: Any) -> Rejection | None:
    """The reason :class:`AccessControl` rejected ``assoc`` (None: it did not)."""
    found = getattr(assoc, _REJECTION, None)
    return found if isinstance(found, Rejection) else None


class AccessControl:
    """The association check and the per-request checks of one DIMSE server."""

    def __init__(self, *, registry: Registry, ae_title: str, refusals: RefusalAudit) -> None:
        self.registry = registry
        self.ae_title = ae_title.strip()
        self.refusals = refusals

    def before(self, then: Callable[[Event], None]) -> Callable[[Event], None]:
        """An ``EVT_REQUESTED`` handler: the check, then ``then`` for an admitted request."""

        def requested(event: Event) -> None:
            try:
                admitted = self.admit(event.assoc)
            except Exception:  # pynetdicom would log it and negotiate: refuse instead
                log.exception("the access check of an association failed")
                if event.assoc.is_rejected:
                    return
                _reject(event.assoc, (REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION,
                                      TEMPORARY_CONGESTION), Rejection(CHECK_FAILED))
                return
            if admitted:
                then(event)

        return requested

    def admit(self, assoc: Any) -> bool:
        """Decide an acceptor's association on its A-ASSOCIATE-RQ; False when rejected (the
        A-ASSOCIATE-RJ is sent and the association ends)."""
        request = assoc.requestor.primitive
        if request is None or not assoc.is_acceptor:
            return True
        # pynetdicom sets this during negotiation, which a rejection skips: the log and the
        # audit trail name the caller by it
        assoc.requestor.ae_title = request.calling_ae_title
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        try:
            admission = self.registry.admit(calling, str(assoc.requestor.address))
        except OutOfResources:
            _reject(assoc, (REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION,
                            TEMPORARY_CONGESTION), Rejection(REGISTRY_UNREADABLE))
            return False
        if admission.refused is not None:
            _reject(assoc, (REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED),
                    Rejection(admission.refused))
            return False
        if called != self.ae_title:
            _reject(assoc, (REJECTED_PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNISED),
                    Rejection(CALLED_AE_REASON, {"called_ae_title": called}))
            return False
        setattr(assoc, _GRANTED, admission.services)
        return True

    def denial(self, assoc: Any, service: Service) -> NotAuthorized | None:
        """None when ``assoc``'s AE may use ``service``; else the refusal to answer with,
        audited (counted) and logged once per kind between two audit writes."""
        granted: frozenset[Service] = getattr(assoc, _GRANTED, frozenset())
        if service in granted:
            return None
        calling = str(assoc.requestor.ae_title).strip()
        host = str(assoc.requestor.address)
        if self.refusals.note(host=host, action=PERMISSION_DENIED,
                              reason=f"may not {service.dimse}", ae_title=calling):
            log.warning("%s from %s at %s refused: not allowed to this AE", service.dimse,
                        calling, host)
        return NotAuthorized(f"calling AE {calling!r} may not {service.dimse}")


def _reject(assoc: Any, code: tuple[int, int, int], why: Rejection) -> None:
    """What pynetdicom does when it rejects an association itself (``acse.py``,
    ``_negotiate_as_acceptor``): send the A-ASSOCIATE-RJ, tell ``EVT_REJECTED``'s handlers
    (they log and audit it, with :func:`rejection`'s reason), end the association."""
    setattr(assoc, _REJECTION, why)
    assoc.acse.send_reject(*code)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
