"""The Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION in, N-EVENT-REPORT out.

* :class:`CommitmentHandlers` serves the N-ACTION (action type 1, J.3.2) through pynetdicom's
  Storage Commitment service class (on both transports): the request is validated and
  recorded (``CommitmentService.request``), answered 0x0000 at once, then checked and reported
  by a thread of its own (``CommitmentService.deliver``).
* The report goes on the requestor's association while it is still established and no release
  was asked for (J.3.3 allows it: DCMTK's and dcm4che's SCUs wait for it there), as an
  N-EVENT-REPORT-RQ of the SCP; pynetdicom pauses the association's reactor while it waits
  for the response. A requestor that does not wait releases at once: the report waits
  ``RELEASE_GRACE_S`` after the N-ACTION-RSP for that release, so it does not cross it. One
  that releases later still crosses the report (its A-RELEASE-RQ and our N-EVENT-REPORT-RQ
  pass each other; PS3.8 leaves it unanswered): that wait ends after
  ``SAME_ASSOCIATION_TIMEOUT_S`` and pynetdicom aborts the association. Otherwise
  :class:`CommitmentReportSender` opens a new association to the requestor at its registered
  address (Orthanc's SCU expects that), proposing the SCP role for the SOP Class by SCP/SCU
  Role Selection (PS3.7 D.3.3.4), as the SCP that opens an association must.

Access: with the AE registry on, an AE needs the ``store`` service (it asks about what it
stored); a refused request is answered 0x0124 with an Error Comment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event

from pacs.dimse.access import AccessControl
from pacs.dimse.handlers import _origin as origin_of
from pacs.dimse.status import NStatus, n_status
from pacs.dimse.transport import Transport
from pacs.services.ae_registry import Service
from pacs.services.commitment import (
    MAX_REFERENCES,
    REQUEST_COMMITMENT,
    STORAGE_COMMITMENT_PUSH,
    WELL_KNOWN_INSTANCE,
    CommitmentReport,
    CommitmentService,
)
from pacs.services.errors import InvalidValue, MissingAttribute, OutOfResources, PacsError
from pacs.services.retrieve import Destination

log = logging.getLogger(__name__)

MAX_ACTION_INFORMATION_BYTES = 4 << 20  # 10,000 references of two UIDs fit in 2 MB
_ERROR_COMMENT_MAX = 64
RELEASE_GRACE_S = 1.0  # after the N-ACTION-RSP: time for a requestor that leaves to release
SAME_ASSOCIATION_TIMEOUT_S = 10.0  # for the N-EVENT-REPORT-RSP on the requestor's association


class CommitmentHandlers:
    """EVT_N_ACTION of one DIMSE server."""

    def __init__(self, service: CommitmentService, access: AccessControl | None = None,
                 transport: Transport | None = None) -> None:
        self.service = service
        self.access = access
        self.transport = transport or Transport()

    def bindings(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_N_ACTION, self.on_action)]

    def on_action(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        """N-ACTION Request Storage Commitment (PS3.4 J.3.2)."""
        request = cast(N_ACTION, event.request)
        refused = self._refused(event, request)
        if refused is not None:
            return refused, None
        assoc = event.assoc
        try:
            transaction, references = _request(event)
            commitment_id = self.service.request(transaction, references,
                                                 origin=origin_of(assoc))
        except PacsError as error:
            status = n_status(error, action=True)
            log.warning("storage commitment from %s refused (0x%04X): %s",
                        _calling(event), status, error)
            return _status(status, str(error)), None
        threading.Thread(target=self._deliver,
                         args=(assoc, commitment_id, time.monotonic() + RELEASE_GRACE_S),
                         name="commitment-report", daemon=True).start()
        return int(NStatus.SUCCESS), None

    def _deliver(self, assoc: Any, commitment_id: int, grace_ends: float) -> None:
        try:
            self.service.deliver(commitment_id,
                                 lambda report: self._same(assoc, report, grace_ends))
        except PacsError as error:  # left pending: the background worker takes it up
            log.warning("storage commitment report %d: %s", commitment_id, error)
        except Exception:  # noqa: BLE001 (a thread of its own: log, the worker retries)
            log.exception("storage commitment report %d failed", commitment_id)

    def _same(self, assoc: Any, report: CommitmentReport, grace_ends: float) -> str | None:
        """Send the report on the requestor's association unless it leaves by
        ``grace_ends``; None once it was answered 0x0000, else why not (then a new
        association is used)."""
        while True:  # the reactor serves a release meanwhile (asking the ACSE would take it)
            if not self.transport.connected(assoc):
                return "the requestor released the association"
            if time.monotonic() >= grace_ends:
                break
            time.sleep(0.01)
        previous = assoc.dimse_timeout
        assoc.dimse_timeout = SAME_ASSOCIATION_TIMEOUT_S
        try:
            return _send(assoc, report)
        finally:
            assoc.dimse_timeout = previous

    def _refused(self, event: Event, request: N_ACTION) -> Dataset | None:
        if self.access is not None:
            denied = self.access.denial(event.assoc, Service.STORE)
            if denied is not None:
                return _status(NStatus.NOT_AUTHORIZED, f"calling AE {_calling(event)!r} "
                               "may not request storage commitment")
        if str(request.RequestedSOPClassUID or "") != STORAGE_COMMITMENT_PUSH:
            return _status(NStatus.NO_SUCH_SOP_CLASS, "only Storage Commitment Push Model")
        if str(request.RequestedSOPInstanceUID or "") != WELL_KNOWN_INSTANCE:
            return _status(NStatus.NO_SUCH_SOP_INSTANCE,
                           f"the SOP Instance must be {WELL_KNOWN_INSTANCE}")
        if request.ActionTypeID != REQUEST_COMMITMENT:
            return _status(NStatus.NO_SUCH_ACTION, f"no action type {request.ActionTypeID}")
        data = request.ActionInformation
        size = len(data.getvalue()) if data is not None else 0
        if size > MAX_ACTION_INFORMATION_BYTES:
            return _status(NStatus.RESOURCE_LIMITATION,
                           f"action information too large ({size} bytes)")
        return None


def _request(event: Event) -> tuple[str | None, list[tuple[str, str]]]:
    """The Transaction UID and the (SOP Class UID, SOP Instance UID) references of an
    N-ACTION's Action Information (PS3.4 J.3.2.1.1)."""
    try:
        information = event.action_information
        transaction = information.get("TransactionUID")
        items = information.get("ReferencedSOPSequence")
    except (ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError) as error:
        raise InvalidValue(f"the action information cannot be decoded: {error}") from error
    if not items:
        raise MissingAttribute("Referenced SOP Sequence (0008,1199) is missing or empty")
    if len(items) > MAX_REFERENCES:
        raise OutOfResources(f"{len(items)} references: at most {MAX_REFERENCES}")
    references = []
    for item in items:
        sop_class = item.get("ReferencedSOPClassUID")
        sop_instance = item.get("ReferencedSOPInstanceUID")
        if not sop_class or not sop_instance:
            raise MissingAttribute("a Referenced SOP Sequence item lacks its SOP Class or "
                                   "SOP Instance UID")
        references.append((str(sop_class), str(sop_instance)))
    return (str(transaction) if transaction else None), references


def event_information(report: CommitmentReport) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 J.3.3.1, Table J.3-2)."""
    information = Dataset()
    information.TransactionUID = report.transaction_uid
    if report.retrieve_ae_title:
        information.RetrieveAETitle = report.retrieve_ae_title
    if report.succeeded:
        information.ReferencedSOPSequence = Sequence([
            _item(sop_class, sop_instance) for sop_class, sop_instance in report.succeeded])
    if report.failed:
        failed = []
        for sop_class, sop_instance, reason in report.failed:
            item = _item(sop_class, sop_instance)
            item.FailureReason = reason
            failed.append(item)
        information.FailedSOPSequence = Sequence(failed)
    return information


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _send(assoc: Any, report: CommitmentReport) -> str | None:
    try:
        status, _reply = assoc.send_n_event_report(
            event_information(report), report.event_type, STORAGE_COMMITMENT_PUSH,
            WELL_KNOWN_INSTANCE)
    except (RuntimeError, ValueError) as error:  # no longer established, no context
        return str(error)
    if status is None or "Status" not in status:
        return "no N-EVENT-REPORT response"
    if int(status.Status) != int(NStatus.SUCCESS):
        return f"the N-EVENT-REPORT was answered 0x{int(status.Status):04X}"
    return None


class CommitmentReportSender:
    """The report on a new association to the requestor (``CommitmentService``'s sender)."""

    def __init__(self, ae_title: str, *, transport: Callable[[], Transport],
                 timeout: float = 20.0) -> None:
        self.ae_title = ae_title
        self._transport = transport
        self.timeout = timeout  # each of ACSE, DIMSE and network: under the report's lease

    def __call__(self, destination: Destination, report: CommitmentReport) -> str | None:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        context = build_context(STORAGE_COMMITMENT_PUSH,
                                [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
        where = f"{destination.ae_title} at {destination.host}:{destination.port}"
        try:
            assoc = ae.associate(destination.host, destination.port, contexts=[context],
                                 ae_title=destination.ae_title, ext_neg=[role],
                                 evt_handlers=[(evt.EVT_CONN_OPEN, self._opened)])
        except (OSError, ValueError) as error:
            return f"cannot associate with {where}: {error}"
        if not assoc.is_established:
            return f"cannot associate with {where}"
        try:
            problem = _send(assoc, report)
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        return None if problem is None else f"{where}: {problem}"

    def _opened(self, event: Any) -> None:
        self._transport().requested(event.assoc)


def _calling(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _status(status: NStatus, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return answer
