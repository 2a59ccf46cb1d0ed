"""C-FIND, C-MOVE and C-GET on pynetdicom as published (``PACS_DIMSE_TRANSPORT=stock``).

The fast transport serves Query/Retrieve with service classes of its own (``qr.py``); this one
binds event handlers to pynetdicom's own ``QueryRetrieveServiceClass`` and speaks only the
handler protocol pynetdicom 3.0 publishes (``service_class.py``, ``events.py``):

* ``EVT_C_FIND``: ``(status, identifier)`` pairs, a pending one per match;
* ``EVT_C_MOVE``: the destination ``(host, port, {arguments of AE.associate})``, the number of
  sub-operations, then ``(0xFF00, dataset)`` per instance;
* ``EVT_C_GET``: the number of sub-operations, then ``(0xFF00, dataset)`` per instance.

Requests are read and answered with the services the fast path calls, in the same order
(``identifiers.py``, :class:`QueryService`, :class:`RetrieveService`, the same audit events and
log lines). pynetdicom counts the sub-operations, sends the pending responses and chooses the
final status by the rules ``retrieve.py`` applies too (PS3.4 C.4.2.1.5: success; 0xB000 when
some failed or warned; 0xA702 when all failed; with the Failed SOP Instance UID List). What the
protocol cannot say, and what is said instead:

* Instances are yielded as pydicom datasets read from the file ``RetrieveService.prepared``
  gives (its File Meta names the transfer syntax to send in), and pynetdicom encodes them: the
  data set bytes are the file's, as pydicom writes back the raw elements it read, except that
  it leaves out group lengths (gggg,0000) of groups above 0006 (retired, PS3.5 7.2). A whole
  instance is held in memory while it is sent.
* An instance that cannot be sent (no presentation context for it, no transfer syntax it can
  be converted to, its file gone) is yielded as a stand-in pynetdicom refuses to send: that is
  how the protocol counts a failed sub-operation with its SOP Instance UID.
* A C-MOVE is answered with a status of ours only after pynetdicom has associated with the
  destination. A C-MOVE refused once its destination is known (the calling AE may not move, a
  bad Identifier) therefore associates with the destination, proposing Verification only, and
  releases without a request; an unknown destination is 0xA801 for every caller, one that may
  not move too. A destination that cannot be reached is pynetdicom's 0xA801, without an Error
  Comment, where the fast path says 0xA702 "cannot associate with ..." (the audit says why).
* A C-MOVE or C-GET refused before its sub-operations announces one sub-operation to reach
  the failure response, and pynetdicom counts it: Number of Failed Sub-operations 1 and an
  empty Failed SOP Instance UID List beside the status and its Error Comment.
* A C-STORE response status pynetdicom does not know is a failure (pynetdicom's rule), not a
  warning as ``retrieve.py`` reads an unlisted 0xBxxx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.valuerep import DSfloat
from pynetdicom import build_context, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.status import STATUS_FAILURE, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS

from pacs.dimse.contexts import VERIFICATION, WORKLIST, missing_context
from pacs.dimse.identifiers import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    InformationModel,
    find_request,
    response,
    retrieve_query,
)
from pacs.dimse.qr import QueryRetrieveServices
from pacs.dimse.status import Status, query_status
from pacs.dimse.tls import subject_of
from pacs.dimse.transport import Transport
from pacs.dimse.worklist import PublishedWorklist
from pacs.services import metrics
from pacs.services.ae_registry import Service
from pacs.services.errors import PacsError
from pacs.services.retrieve import Destination, RetrievePlan, RetrieveService
from pacs.services.workflow import actor

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from storage.query import RetrieveItem

log = logging.getLogger(__name__)

Answer = tuple[int | Dataset, Dataset | None]  # (status, identifier or dataset), as yielded

_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


class PublishedQueryRetrieve:
    """C-FIND, C-MOVE and C-GET as event handlers of pynetdicom's own Query/Retrieve service
    class."""

    def __init__(self, services: QueryRetrieveServices,
                 transport: Transport | None = None) -> None:
        """``transport``: tunes the associations a C-MOVE opens (TCP_NODELAY: without it each
        sub-operation waits about 40 ms for Nagle's algorithm and a delayed ACK)."""
        self.services = services
        self.transport = transport or Transport()
        self.worklist = (PublishedWorklist(services.worklist,
                                           fuzzy_person_names=services.fuzzy_person_names)
                         if services.worklist is not None else None)

    def bindings(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_FIND, _timed("C-FIND", self.on_find)),
            (evt.EVT_C_MOVE, _timed("C-MOVE", self.on_move)),
            (evt.EVT_C_GET, _timed("C-GET", self.on_get)),
        ]

    def on_find(self, event: Event) -> Iterator[Answer]:
        """C-FIND (PS3.4 C.4.1): a pending response per match, C-CANCEL honoured between
        them (pynetdicom checks for none itself)."""
        denied = self._denied(event, Service.FIND)
        if denied is not None:
            yield denied, None
            return
        if _sop_class(event) in WORKLIST and self.worklist is not None:
            yield from self.worklist.on_find(event)  # Modality Worklist, worklist.py
            return
        who, calling = _requestor(event.assoc)
        query = self.services.query
        try:
            find = find_request(event.identifier, FIND_MODELS[_sop_class(event)],
                                fuzzy_person_names=self.services.fuzzy_person_names)
        except PacsError as error:
            status = query_status(error)
            log.warning("C-FIND from %s refused (0x%04X): %s", calling, status, error)
            query.refused(who=who, how="C-FIND", reason=str(error))
            yield _failure(status, str(error)), None
            return
        except ValueError as error:  # an Identifier pydicom cannot decode
            log.warning("C-FIND from %s: undecodable identifier: %s", calling, error)
            query.refused(who=who, how="C-FIND", reason="cannot decode the identifier")
            yield _failure(Status.CANNOT_UNDERSTAND, f"cannot decode identifier: {error}"), None
            return
        count = 0
        try:
            for row in query.find(find.query, who=who):  # audited by the service
                if event.is_cancelled:
                    log.info("C-FIND cancelled after %d matches", count)
                    yield int(Status.CANCEL), None
                    return
                values, character_set = response(row, find, ae_title=self.services.ae_title)
                yield int(Status.PENDING), _identifier(values, character_set)
                count += 1
                if not count % _CANCEL_CHECK_EVERY:
                    _let_the_dul_read()
        except PacsError as error:  # the index failed before or between the matches
            status = query_status(error)
            log.warning("C-FIND from %s refused (0x%04X): %s", calling, status, error)
            yield _failure(status, str(error)), None
            return
        log.info("C-FIND %s level from %s: %d matches", find.query.level, calling, count)

    def on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2): the destination, the number of sub-operations, then each
        instance, sent by pynetdicom on its association with the destination."""
        request = cast(C_MOVE, event.request)
        denied = self._denied(event, Service.MOVE)
        retrieval = _Retrieval(self.services.retrieve, event,
                               move_destination=str(request.MoveDestination).strip())
        try:
            destination = self.services.retrieve.destination(str(request.MoveDestination))
        except PacsError as error:  # unknown, or the registry cannot be read
            if denied is None:
                retrieval.refused(Status.MOVE_DESTINATION_UNKNOWN, str(error))
            yield None, None  # pynetdicom answers 0xA801
            return
        if denied is not None:
            yield from _move_refusal(destination, denied)
            return
        plan = retrieval.make_plan(MOVE_MODELS)
        if isinstance(plan, Dataset):
            yield from _move_refusal(destination, plan)
            return
        contexts = [build_context(sop_class, list(syntaxes))
                    for sop_class, syntaxes in plan.proposals()]
        yield destination.host, destination.port, {
            "ae_title": destination.ae_title,
            "contexts": contexts,
            "evt_handlers": [(evt.EVT_CONN_OPEN, self._opened),
                             (evt.EVT_ACCEPTED, retrieval.on_accepted),
                             (evt.EVT_DIMSE_RECV, retrieval.on_message)],
        }
        if not plan.items:  # pynetdicom answers success without associating
            retrieval.done()
            yield 0
            return
        try:
            yield len(plan.items)
        except GeneratorExit:  # dropped before the sub-operations
            if not event.assoc.is_established:
                retrieval.done("association lost")
                raise
            # pynetdicom could not associate with the destination, and answered 0xA801
            log.warning("C-MOVE: cannot associate with %s at %s:%d", destination.ae_title,
                        destination.host, destination.port)
            retrieval.refused(Status.MOVE_DESTINATION_UNKNOWN,
                              f"cannot associate with {destination.ae_title}")
            raise
        yield from retrieval.sub_operations(plan, retrieval.store)

    def _opened(self, event: Event) -> None:
        self.transport.requested(event.assoc)

    def on_get(self, event: Event) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3): the number of sub-operations, then each instance, sent by
        pynetdicom on the requestor's association (as the Storage SCU of the contexts it
        proposed with the SCP role, PS3.7 D.3.3.4)."""
        denied = self._denied(event, Service.GET)
        if denied is not None:
            yield from _get_refusal(denied)
            return
        retrieval = _Retrieval(self.services.retrieve, event, move_destination=None)
        plan = retrieval.make_plan(GET_MODELS)
        if isinstance(plan, Dataset):
            yield from _get_refusal(plan)
            return
        if not plan.items:  # pynetdicom answers success
            retrieval.done()
            yield 0
            return
        event.assoc.bind(evt.EVT_DIMSE_RECV, retrieval.on_message)
        try:
            yield len(plan.items)
            yield from retrieval.sub_operations(plan, event.assoc)
        finally:
            event.assoc.unbind(evt.EVT_DIMSE_RECV, retrieval.on_message)

    def _denied(self, event: Event, service: Service) -> Dataset | None:
        """The failure answering a request the calling AE may not make, as
        ``qr.QueryRetrieveSCP`` answers it (``access.py``); None when it may."""
        access = self.services.access
        denied = access.denial(event.assoc, service) if access is not None else None
        return _failure(query_status(denied), str(denied)) if denied is not None else None


def _timed(service: str, handler: Callable[[Event], Iterator[Any]]
           ) -> Callable[[Event], Iterator[Any]]:
    """``handler``, its request's time in the metrics (``pacs_dimse_request_duration_seconds``):
    from the call to the end of its answers (pynetdicom sends each as it is yielded)."""

    def timed(event: Event) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            yield from handler(event)
        finally:
            metrics.dimse_request(service, time.perf_counter() - started)

    return timed


class _Retrieval:
    """One C-MOVE or C-GET: its plan, its sub-operations counted as pynetdicom counts them
    (from the C-STORE responses the association receives), and its one audit event."""

    def __init__(self, service: RetrieveService, event: Event, *,
                 move_destination: str | None) -> None:
        """``move_destination``: a C-MOVE's, as requested; None for a C-GET."""
        self.service = service
        self.event = event
        self.is_get = move_destination is None
        self.name = "C-GET" if move_destination is None else "C-MOVE"
        self.how = "C-GET" if move_destination is None else f"C-MOVE to {move_destination}"
        self.who, self.calling = _requestor(event.assoc)
        self.plan: RetrievePlan | None = None
        self.store: Association | None = None  # C-MOVE: the association with the destination
        self.answer: int | None = None  # the status of the last C-STORE response received
        self.attempted = 0
        self.failed: list[str] = []
        self.warning: list[str] = []
        self.audited = False

    def make_plan(self, models: Mapping[str, InformationModel]) -> RetrievePlan | Dataset:
        """The instances the Identifier names; or, when it cannot be read, the failure to
        answer with (audited as refused)."""
        try:
            query = retrieve_query(self.event.identifier, models[_sop_class(self.event)])
            plan = self.plan = self.service.plan(query)  # audited when it ends
        except PacsError as error:
            return self.refused(query_status(error), str(error))
        except ValueError as error:  # an Identifier pydicom cannot decode
            return self.refused(Status.CANNOT_UNDERSTAND, f"cannot decode identifier: {error}")
        log.info("%s of %d instances (%s level) for %s", self.name, len(plan.items),
                 query.level, self.calling)
        return plan

    def refused(self, status: Status, comment: str) -> Dataset:
        log.warning("retrieve refused (0x%04X): %s", int(status), comment)
        self.service.refused(who=self.who, how=self.how, reason=comment,
                             status=f"0x{int(status):04X}", plan=self.plan)
        self.audited = True
        return _failure(status, comment)

    # -- pynetdicom's events -------------------------------------------------------------
    def on_accepted(self, event: Event) -> None:
        """``EVT_ACCEPTED`` of the association pynetdicom makes with a C-MOVE destination:
        its accepted contexts choose the transfer syntax of each instance."""
        self.store = event.assoc

    def on_message(self, event: Event) -> None:
        """``EVT_DIMSE_RECV`` of the association the instances go out on: the status of a
        C-STORE response (pynetdicom keeps it to itself)."""
        if isinstance(event.message, C_STORE_RSP):
            self.answer = int(event.message.command_set.Status)

    # -- the sub-operations --------------------------------------------------------------
    def sub_operations(self, plan: RetrievePlan, store: Association | None
                       ) -> Iterator[Answer]:
        """An instance at a time over ``store``, C-CANCEL honoured between them; the outcome
        of each is known when pynetdicom asks for the next one."""
        accepted = _accepted(store)
        gone = False
        try:
            for item in plan.items:
                if self.event.is_cancelled:
                    remaining = len(plan.items) - self.attempted
                    log.info("retrieve cancelled with %d sub-operations remaining", remaining)
                    self.done(f"0x{int(Status.CANCEL):04X} cancelled")
                    yield int(Status.CANCEL), None  # pynetdicom adds counts and failed UIDs
                    return
                if store is None or not store.is_established:
                    if not gone:
                        log.warning("the association to send on is gone: the %d remaining "
                                    "sub-operations fail", len(plan.items) - self.attempted)
                    gone = True
                    dataset = _unsendable(item)
                else:
                    dataset = self._dataset(store, item, accepted)
                self.answer = None
                if not self.is_get:
                    _let_the_reactor_pause()
                yield int(Status.PENDING), dataset
                self._count(item)
        except GeneratorExit:  # pynetdicom stopped: the requestor released or went away
            self.done("association lost")
            raise
        self.done()

    def _dataset(self, store: Association, item: RetrieveItem,
                 accepted: dict[str, list[str]]) -> Dataset:
        """``item`` read from its prepared file, or a stand-in when it cannot be sent."""
        syntaxes = accepted.get(item.sop_class_uid or "")
        if not syntaxes:  # no context for the class at all: say so, not "no transfer syntax"
            reason = missing_context(store, item.sop_class_uid or "",
                                     peer_is_requestor=self.is_get)
        else:
            try:
                with self.service.prepared(item, syntaxes) as ready:
                    return dcmread(ready.path)  # whole: a transcoded file is gone afterwards
            except PacsError as error:  # cannot transcode (too large to decode), gone, busy
                reason = str(error)
            except (OSError, InvalidDicomError) as error:
                reason = f"cannot read the stored file: {error}"
        log.warning("sub-operation for %s failed: %s", item.sop_instance_uid, reason)
        return _unsendable(item)

    def _count(self, item: RetrieveItem) -> None:
        """As pynetdicom counts it: a status its table does not list, or none (no response,
        nothing sent), is a failure."""
        self.attempted += 1
        status = self.answer
        category = (STORAGE_SERVICE_CLASS_STATUS.get(status, (STATUS_FAILURE, ""))[0]
                    if status is not None else STATUS_FAILURE)
        if status is not None and status != 0:
            log.warning("C-STORE of %s answered 0x%04X", item.sop_instance_uid, status)
        if category == STATUS_FAILURE:
            self.failed.append(item.sop_instance_uid)
        elif category == STATUS_WARNING:
            self.warning.append(item.sop_instance_uid)

    def done(self, status: str | None = None) -> None:
        """The outcome, as pynetdicom tells the requestor (``status``: when it says something
        other than the final status of the counts), into the audit trail, once."""
        if self.audited or self.plan is None:
            return
        self.audited = True
        if status is None:
            final = _final_status(len(self.plan.items), len(self.failed), len(self.warning))
            log.info("retrieve done: %d completed, %d failed, %d warning",
                     self.attempted - len(self.failed) - len(self.warning), len(self.failed),
                     len(self.warning))
            status = f"0x{int(final):04X}"
        self.service.finished(self.plan, who=self.who, how=self.how, attempted=self.attempted,
                              failed=self.failed, warning=self.warning, status=status)


def _final_status(total: int, failed: int, warning: int) -> Status:
    """PS3.4 C.4.2.1.5 and C.4.3.1.4, as pynetdicom applies them."""
    if failed == 0 and warning == 0:
        return Status.SUCCESS
    if failed == total:
        return Status.UNABLE_TO_PERFORM_SUBOPERATIONS
    return Status.SUBOPERATIONS_WARNING


def _move_refusal(destination: Destination, answer: Dataset) -> Iterator[Any]:
    """A C-MOVE failure with its Error Comment: pynetdicom sends one only on an association
    with the destination, so one is made, proposing Verification alone, and released
    unused. pynetdicom counts the one sub-operation announced as failed."""
    yield destination.host, destination.port, {
        "ae_title": destination.ae_title, "contexts": [build_context(VERIFICATION)]}
    yield 1
    yield answer, None


def _get_refusal(answer: Dataset) -> Iterator[Any]:
    """A C-GET failure with its Error Comment, after the one sub-operation pynetdicom must
    be announced to send a failure (it counts it as failed)."""
    yield 1
    yield answer, None


def _requestor(assoc: Association) -> tuple[str, str]:
    """The audit trail's actor of the requestor and its calling AE title."""
    requestor = assoc.requestor
    calling = str(requestor.ae_title).strip()
    return actor("dimse", calling, requestor.address, tls_subject=subject_of(assoc)), calling


def _sop_class(event: Event) -> str:
    """The request's SOP class; ``contexts.scp_contexts`` offers the Q/R ones of
    ``identifiers.py`` and the Modality Worklist's only."""
    return str(event.context.abstract_syntax)


def _accepted(store: Association | None) -> dict[str, list[str]]:
    """SOP class → transfer syntaxes we may send in over ``store``: its accepted contexts in
    which we are the Storage SCU (on a C-GET requestor's association, those it proposed with
    the SCP role for itself), as pynetdicom chooses among them."""
    accepted: dict[str, list[str]] = {}
    for context in store.accepted_contexts if store is not None else []:
        if context.as_scu:
            accepted.setdefault(str(context.abstract_syntax), []).extend(
                str(ts) for ts in context.transfer_syntax)
    return accepted


# pynetdicom queues each pending C-FIND response for its DUL thread without waiting for the
# peer to read it; the thread generating them pauses this often so that the DUL thread, which
# also reads a C-CANCEL, gets to run on a busy machine (the fast path keeps its queue short
# instead: fast.send_when_drained)
_CANCEL_CHECK_EVERY = 50


def _let_the_dul_read() -> None:
    time.sleep(_REACTOR_TURN_S)


# How long a C-MOVE's sub-operation gives the destination association's reactor thread, which
# pynetdicom 3.0's send_c_store pauses around each request: that thread must see the previous
# request's resume before the next request asks it to pause again, or it may take the next
# response for itself ("Received unexpected C-STORE service message") and the sub-operation
# then waits out the DIMSE timeout. This thread would otherwise keep the GIL from it.
_REACTOR_TURN_S = 0.0005


def _let_the_reactor_pause() -> None:
    time.sleep(_REACTOR_TURN_S)


def _unsendable(item: RetrieveItem) -> Dataset:
    """A stand-in for an instance that cannot be sent: without a SOP Class UID pynetdicom
    refuses to send it, fails the sub-operation and lists its SOP Instance UID as failed."""
    stand_in = Dataset()
    stand_in.SOPInstanceUID = item.sop_instance_uid
    return stand_in


def _failure(status: Status, comment: str) -> Dataset:
    """A failure status with its Error Comment, as pynetdicom takes one from a handler."""
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return answer


def _identifier(values: list[tuple[str, Any]], character_set: str | None) -> Dataset:
    """A C-FIND response Identifier from ``identifiers.response``: the values, the Specific
    Character Set when given ("" present and empty, None left out), each element with the
    first VR its keyword allows, as ``encoding.identifier`` writes them. Values are not
    validated: the index gives them back as they were received (an over-long LO included)."""
    identifier = Dataset()
    if character_set is not None:
        identifier.add(DataElement(0x00080005, "CS", character_set or None,
                                   validation_mode=config.IGNORE))
    for keyword, value in values:
        tag = Tag(keyword)
        vr = str(dictionary_VR(tag)).split(" or ")[0]
        identifier.add(DataElement(tag, vr, _value(vr, value), validation_mode=config.IGNORE))
    return identifier


def _value(vr: str, value: Any) -> Any:
    """A response value as pydicom takes it: None for empty, an empty list for a sequence
    (only empty ones are returned); a DS float in at most 16 characters, an IS float whole."""
    if vr == "SQ":
        return []
    if value is None or value == []:
        return None
    values = value if isinstance(value, list) else [value]
    if vr == "DS":
        values = [DSfloat(v, auto_format=True) if isinstance(v, float) else v for v in values]
    elif vr == "IS":
        values = [int(v) if isinstance(v, float) else v for v in values]
    return values[0] if len(values) == 1 else values
