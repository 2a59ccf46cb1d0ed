"""The MPPS SCP (PS3.4 F.7): N-CREATE and N-SET of Modality Performed Procedure Steps.

pynetdicom's Procedure Step service class (``ProcedureStepServiceClass``, on both transports:
the fast one leaves the N-services to pynetdicom, ``qr.install``) calls these handlers; each
parses the request, makes one service call (``pacs.services.mpps``) and answers with a status.

Access: with the AE registry on (``access.py``), an AE needs the ``store`` service: the
modalities that store are those that report what they performed. A refused request is
answered 0x0124 (Refused: Not Authorized) with an Error Comment.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from pacs.dimse.access import AccessControl
from pacs.dimse.handlers import _origin as origin_of
from pacs.dimse.status import MAY_NO_LONGER_BE_UPDATED, NStatus, n_status
from pacs.services.ae_registry import Service
from pacs.services.errors import IllegalTransition, PacsError
from pacs.services.mpps import MPPS_SOP_CLASS, MppsService

log = logging.getLogger(__name__)

MAX_ATTRIBUTE_LIST_BYTES = 1 << 20  # as received (the service bounds what it keeps too)
_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


class MppsHandlers:
    """EVT_N_CREATE and EVT_N_SET of one DIMSE server."""

    def __init__(self, service: MppsService, access: AccessControl | None = None) -> None:
        self.service = service
        self.access = access

    def bindings(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_N_CREATE, self.on_create), (evt.EVT_N_SET, self.on_set)]

    def on_create(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        """N-CREATE (PS3.4 F.7.2.1); the SOP Instance UID made here is returned when the
        request had none (PS3.7 10.1.5.1.4)."""
        request = cast(N_CREATE, event.request)
        refused = self._refused(event, str(request.AffectedSOPClassUID or ""),
                                request.AttributeList)
        if refused is not None:
            return refused, None
        try:
            attributes = _decoded(event, "attribute_list")
            outcome = self.service.create(
                attributes, origin=origin_of(event.assoc),
                sop_instance_uid=(str(request.AffectedSOPInstanceUID)
                                  if request.AffectedSOPInstanceUID else None))
        except PacsError as error:
            return _failure(error, "N-CREATE", event), None
        answer = Dataset()
        if not request.AffectedSOPInstanceUID:
            answer.AffectedSOPInstanceUID = outcome.sop_instance_uid
        return int(NStatus.SUCCESS), answer

    def on_set(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        """N-SET (PS3.4 F.7.2.2)."""
        request = cast(N_SET, event.request)
        refused = self._refused(event, str(request.RequestedSOPClassUID or ""),
                                request.ModificationList)
        if refused is not None:
            return refused, None
        try:
            modifications = _decoded(event, "modification_list")
            self.service.set(str(request.RequestedSOPInstanceUID or ""), modifications,
                             origin=origin_of(event.assoc))
        except PacsError as error:
            return _failure(error, "N-SET", event), None
        return int(NStatus.SUCCESS), Dataset()

    def _refused(self, event: Event, sop_class: str, data: Any) -> Dataset | None:
        """A status for a request refused before its data set is decoded, else None."""
        if self.access is not None:
            denied = self.access.denial(event.assoc, Service.STORE)
            if denied is not None:
                return _status(NStatus.NOT_AUTHORIZED,
                               f"calling AE {_calling(event)!r} may not report MPPS")
        if sop_class != MPPS_SOP_CLASS:
            return _status(NStatus.NO_SUCH_SOP_CLASS, "only MPPS is served here")
        size = len(data.getvalue()) if data is not None else 0
        if size > MAX_ATTRIBUTE_LIST_BYTES:
            return _status(NStatus.RESOURCE_LIMITATION,
                           f"attribute list too large ({size} bytes)")
        return None


def _decoded(event: Event, which: str) -> Dataset:
    """The request's data set; :class:`InvalidValue` when it cannot be decoded."""
    from pacs.services.errors import InvalidValue

    try:
        decoded = getattr(event, which)
    except (ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError) as error:
        raise InvalidValue(f"the data set cannot be decoded: {error}") from error
    return cast(Dataset, decoded)


def _calling(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _status(status: NStatus, comment: str, error_id: int | None = None) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    if error_id is not None:
        answer.ErrorID = error_id
    return answer


def _failure(error: PacsError, what: str, event: Event) -> Dataset:
    status = n_status(error)
    log.warning("MPPS %s from %s refused (0x%04X): %s", what, _calling(event), status, error)
    error_id = MAY_NO_LONGER_BE_UPDATED if isinstance(error, IllegalTransition) else None
    return _status(status, str(error), error_id)
