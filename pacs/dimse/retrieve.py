"""C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3): C-STORE sub-operations sent from files.

pynetdicom's own Q/R service class hands every instance to ``send_c_store`` as a decoded
``Dataset``, re-encoding it (slow, and not byte-identical). :class:`Retrieval` (called by
``qr.QueryRetrieveSCP``) sends each instance from its stored file with pynetdicom's chunked send,
or from a decoded copy when the peer did not accept the stored transfer syntax, with pending
responses carrying the sub-operation counts and C-CANCEL honoured between sub-operations.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from pacs.dimse.contexts import missing_context
from pacs.dimse.identifiers import GET_MODELS, MOVE_MODELS, retrieve_query
from pacs.dimse.status import Status, query_status
from pacs.dimse.tls import subject_of
from pacs.dimse.transport import encoding, fast
from pacs.services.errors import PacsError
from pacs.services.retrieve import RetrievePlan, RetrieveService
from pacs.services.workflow import actor

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.presentation import PresentationContext
    from pynetdicom.service_class import ServiceClass

    from storage.query import RetrieveItem

log = logging.getLogger(__name__)


@dataclass
class _Counts:
    """Sub-operation counts (PS3.4 C.4.2.1.6)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    warning_uids: list[str] = field(default_factory=list)


class Retrieval:
    """One C-MOVE or C-GET request, from identifier to final response."""

    def __init__(
        self,
        scp: ServiceClass,
        service: RetrieveService,
        request: C_MOVE | C_GET,
        context: PresentationContext,
        *,
        pending_interval: float = 0.0,
    ) -> None:
        self.scp = scp
        self.service = service
        self.request = request
        self.context_id = cast(int, context.context_id)
        self.syntax = context.transfer_syntax[0]
        self.model = (MOVE_MODELS if isinstance(request, C_MOVE) else GET_MODELS)[
            str(context.abstract_syntax)
        ]
        # for the audit trail: who asked, how, and (once known) what was planned
        requestor = scp.assoc.requestor
        self.who = actor("dimse", str(requestor.ae_title).strip(), requestor.address,
                         tls_subject=subject_of(scp.assoc))
        self.how = (f"C-MOVE to {str(request.MoveDestination).strip()}"
                    if isinstance(request, C_MOVE) else "C-GET")
        self.plan: RetrievePlan | None = None
        # a pending response's counts (remaining, completed, failed, warning), due to be sent
        self._due: tuple[int, int, int, int] | None = None
        self.pending_interval = pending_interval  # at most one pending response per this
        self._pending_at = -math.inf  # (time.monotonic() when the last one was due)

    # -- the two services ----------------------------------------------------------------
    def move(self) -> None:
        request = cast(C_MOVE, self.request)
        try:
            destination = self.service.destination(str(request.MoveDestination))
            plan = self._plan()
        except PacsError as error:
            self._fail(query_status(error), str(error))
            return
        if not plan.items:
            self._final(_Counts(remaining=0))
            return
        contexts = [build_context(cls, list(ts)) for cls, ts in plan.proposals()]
        store = self.scp.ae.associate(
            destination.host,
            destination.port,
            contexts=contexts,
            ae_title=destination.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _tune)],
        )
        if not store.is_established:
            log.warning("C-MOVE: cannot associate with %s at %s:%d", destination.ae_title,
                        destination.host, destination.port)
            self._fail(
                Status.UNABLE_TO_PERFORM_SUBOPERATIONS,
                f"cannot associate with {destination.ae_title}",  # its address: the log's
            )
            return
        try:
            # the pending responses too are written by this thread (outbound.py)
            with fast.sending(store), fast.outbound(self.scp.assoc):
                counts = self._send(store, plan, as_scu_only=False)
        finally:
            if fast.connected(store):
                store.release()
            else:  # the destination aborted or went away: nothing to release
                store.abort()
        if counts is not None:
            self._final(counts)

    def get(self) -> None:
        try:
            plan = self._plan()
        except PacsError as error:
            self._fail(query_status(error), str(error))
            return
        with fast.outbound(self.scp.assoc):
            counts = self._send(self.scp.assoc, plan, as_scu_only=True)
        if counts is not None and self.scp.assoc.is_established:
            self._final(counts)
        elif counts is not None:
            self._audit(counts, "association lost")

    # -- steps ---------------------------------------------------------------------------
    def _plan(self) -> RetrievePlan:
        identifier = decode(
            cast(BytesIO, self.request.Identifier),
            self.syntax.is_implicit_VR,
            self.syntax.is_little_endian,
            self.syntax.is_deflated,
        )
        query = retrieve_query(identifier, self.model)
        plan = self.plan = self.service.plan(query)  # audited when it ends (_audit)
        log.info(
            "%s of %d instances (%s level) for %s",
            "C-MOVE" if isinstance(self.request, C_MOVE) else "C-GET",
            len(plan.items),
            query.level,
            str(self.scp.assoc.requestor.ae_title).strip(),
        )
        return plan

    def _send(
        self, store: Association, plan: RetrievePlan, *, as_scu_only: bool
    ) -> _Counts | None:
        """C-STORE every instance over ``store``; None when cancelled (the final response is
        sent then). A pending response follows every sub-operation but the last (0, the
        default), or the first and then at most one per ``pending_interval`` seconds (PS3.4
        C.4.2.3.1 leaves them to the SCP; each costs a write and a wake-up of the requestor);
        it is written while the next request is with the peer (:meth:`_flush_pending`)."""
        counts = _Counts(remaining=len(plan.items))
        accepted = _accepted(store, as_scu_only=as_scu_only)
        originator = self.scp.ae.ae_title if isinstance(self.request, C_MOVE) else None
        message_id = int(self.request.MessageID or 0)
        for number, item in enumerate(plan.items, start=1):
            if self.scp.is_cancelled(message_id):
                self._flush_pending()
                self._cancelled(counts)
                return None
            if not fast.connected(store):
                break
            status = self._store_one(store, item, accepted, originator, message_id, number)
            self._flush_pending()  # (when this sub-operation sent nothing)
            counts.remaining -= 1
            if status is None or _category(status) == "Failure":
                counts.failed += 1
                counts.failed_uids.append(item.sop_instance_uid)
            elif _category(status) == "Warning":
                counts.warning += 1
                counts.warning_uids.append(item.sop_instance_uid)
            else:
                counts.completed += 1
            if counts.remaining and self.scp.assoc.is_established:
                now = time.monotonic()
                if now - self._pending_at >= self.pending_interval:
                    self._pending_at = now
                    self._due = (counts.remaining, counts.completed, counts.failed,
                                 counts.warning)
        self._flush_pending()
        if counts.remaining:  # the destination went away: the rest cannot be sent
            counts.failed += counts.remaining
            counts.failed_uids += [i.sop_instance_uid for i in plan.items[-counts.remaining :]]
            counts.remaining = 0
        return counts

    def _store_one(
        self,
        store: Association,
        item: RetrieveItem,
        accepted: dict[str, list[str]],
        originator: str | None,
        message_id: int,
        number: int,
    ) -> int | None:
        syntaxes = accepted.get(item.sop_class_uid or "")
        if not syntaxes:  # no context for the class at all: say so, not "no transfer syntax"
            log.warning("sub-operation for %s failed: %s", item.sop_instance_uid, missing_context(
                store, item.sop_class_uid or "", peer_is_requestor=store is self.scp.assoc))
            return None
        try:
            with self.service.prepared(item, syntaxes) as ready:
                # C-GET: on the requestor's association; C-MOVE: on ours to the destination
                answer = fast.send_file(
                    store, ready.path, msg_id=(message_id + number) % 65536,
                    originator_aet=originator,
                    originator_id=message_id if originator is not None else None,
                    meanwhile=self._flush_pending,
                )
        except PacsError as error:  # cannot transcode (too large to decode), gone, decoder busy
            log.warning("sub-operation for %s failed: %s", item.sop_instance_uid, error)
            return None
        except (ValueError, AttributeError, RuntimeError) as error:  # pynetdicom refusals
            log.warning("sub-operation for %s failed: %s", item.sop_instance_uid, error)
            return None
        status = answer.get("Status")
        if status is None:
            log.warning("no C-STORE response for %s (the peer aborted?)", item.sop_instance_uid)
            return None
        if int(status) != 0:
            log.warning("C-STORE of %s answered 0x%04X", item.sop_instance_uid, int(status))
        return int(status)

    # -- responses (encoded by ``encoding``, not pynetdicom's pydicom round trip) ----------
    def _flush_pending(self) -> None:
        """The pending response due after the previous sub-operation, if not sent yet: it
        goes out while the next sub-operation's request is with the peer (written before
        waiting for its response), so the response-to-request turn of the C-STOREs stays
        short; the counts are those after the previous sub-operation."""
        due, self._due = self._due, None
        if due is not None and self.scp.assoc.is_established:
            self._respond(Status.PENDING, counts=due)

    def _cancelled(self, counts: _Counts) -> None:
        log.info("retrieve cancelled with %d sub-operations remaining", counts.remaining)
        self._audit(counts, f"0x{int(Status.CANCEL):04X} cancelled")
        self._respond(
            Status.CANCEL,
            counts=(counts.remaining, counts.completed, counts.failed, counts.warning),
            failed=counts.failed_uids,
        )

    def _final(self, counts: _Counts) -> None:
        """C.4.2.1.5: success, warning (some failed or warned) or failure (all failed)."""
        total = counts.completed + counts.failed + counts.warning
        if counts.failed == 0 and counts.warning == 0:
            status = Status.SUCCESS
        elif counts.failed == total:
            status = Status.UNABLE_TO_PERFORM_SUBOPERATIONS
        else:
            status = Status.SUBOPERATIONS_WARNING
        log.info("retrieve done: %d completed, %d failed, %d warning", counts.completed,
                 counts.failed, counts.warning)
        self._audit(counts, f"0x{int(status):04X}")
        self._respond(status, counts=(None, counts.completed, counts.failed, counts.warning),
                   failed=counts.failed_uids)

    def _fail(self, status: Status, comment: str) -> None:
        log.warning("retrieve refused (0x%04X): %s", int(status), comment)
        self.service.refused(who=self.who, how=self.how, reason=comment,
                             status=f"0x{int(status):04X}", plan=self.plan)
        self._respond(status, comment=comment)

    def _audit(self, counts: _Counts, status: str) -> None:
        """The outcome, as the requestor was told it, into the audit trail."""
        if self.plan is not None:
            self.service.finished(self.plan, who=self.who, how=self.how,
                                  attempted=len(self.plan.items) - counts.remaining,
                                  failed=counts.failed_uids, warning=counts.warning_uids,
                                  status=status)

    def _respond(
        self,
        status: Status,
        *,
        counts: tuple[int | None, int, int, int] | None = None,
        failed: list[str] | None = None,
        comment: str = "",
    ) -> None:
        data = None
        if failed:
            data = encoding.identifier([("FailedSOPInstanceUIDList", failed)],
                                       implicit_vr=self.syntax.is_implicit_VR)
        command = encoding.command_set(
            sop_class_uid=str(self.request.AffectedSOPClassUID),
            command_field=(encoding.C_MOVE_RSP if isinstance(self.request, C_MOVE)
                           else encoding.C_GET_RSP),
            message_id_responded_to=int(self.request.MessageID or 0),
            status=int(status),
            data_set=data is not None,
            error_comment=comment or None,
            counts=counts,
        )
        max_pdu = int(self.scp.dimse.maximum_pdu_size or 0)
        fast.send_when_drained(
            self.scp.assoc, encoding.p_data(self.context_id, command, data, max_pdu)
        )


def _tune(event: Any) -> None:
    fast.requested(event.assoc)


def _accepted(store: Association, *, as_scu_only: bool) -> dict[str, list[str]]:
    """SOP class → transfer syntaxes the peer accepted for us to send in."""
    accepted: dict[str, list[str]] = {}
    for context in store.accepted_contexts:
        if as_scu_only and not context.as_scu:
            continue
        accepted.setdefault(str(context.abstract_syntax), []).extend(
            str(ts) for ts in context.transfer_syntax
        )
    return accepted


def _category(status: int) -> str:
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    if known is not None:
        return str(known[0])
    if status == 0x0000:
        return "Success"
    if 0xB000 <= status <= 0xBFFF or status == 0x0001:
        return "Warning"
    return "Failure"
