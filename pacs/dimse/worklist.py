"""Modality Worklist C-FIND SCP (PS3.4 K.4.1, K.6): a pending response per scheduled step.

One request runs as :func:`worklist_answers`, the same on both transports: the Identifier
becomes a :class:`WorklistQuery` (``worklist_identifiers.py``), the worklist service reads
the matching items (audited there), and each item becomes a pending response (0xFF00, or
0xFF01 when an optional key was not matched), then Success; a malformed Identifier is
answered with a failure and its Error Comment (``status.py``, as Q/R's C-FIND). The calling
AE's ``find`` permission is checked before (``qr.QueryRetrieveSCP`` on the fast transport,
``published.PublishedQueryRetrieve`` on the stock one). C-CANCEL is honoured between items.

* fast transport: :class:`WorklistFind`, run by ``qr.QueryRetrieveSCP``, writes each response
  to the DUL (``fast.send_when_drained``); the identifiers are encoded by pydicom
  (``dsutils.encode``): they hold a sequence, which the lean encoder of Q/R does not write,
  and a worklist is a few dozen items, not a hot path;
* stock transport: :class:`PublishedWorklist`, the ``EVT_C_FIND`` handler of pynetdicom's
  Basic Worklist Management service class (``published.py`` passes worklist requests on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode

from pacs.dimse.status import Status, query_status
from pacs.dimse.tls import subject_of
from pacs.dimse.transport import encoding, fast
from pacs.dimse.worklist_identifiers import worklist_request, worklist_response
from pacs.services.errors import PacsError
from pacs.services.workflow import actor
from pacs.services.worklist import WorklistService

if TYPE_CHECKING:
    from pynetdicom.events import Event
    from pynetdicom.presentation import PresentationContext
    from pynetdicom.service_class import ServiceClass

log = logging.getLogger(__name__)

Answer = tuple[Status, Dataset | None, str]  # (status, identifier, error comment)
_PENDING = frozenset({Status.PENDING, Status.PENDING_OPTIONAL_KEYS_UNSUPPORTED})
_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


def worklist_answers(
    worklist: WorklistService, identifier: Callable[[], Dataset], *, who: str, calling: str,
    fuzzy_person_names: bool,
) -> Generator[Answer, None, None]:
    """Every response to one worklist C-FIND, the final one last. ``identifier`` decodes the
    request's Identifier (a ``ValueError`` when it cannot). Closed early (a C-CANCEL, the
    association gone), it ends the query at once: the service audits it as stopped early."""
    try:
        request = worklist_request(identifier(), fuzzy_person_names=fuzzy_person_names)
    except PacsError as error:
        status = query_status(error)
        log.warning("worklist C-FIND from %s refused (0x%04X): %s", calling, status, error)
        worklist.refused(who=who, how="C-FIND", reason=str(error))
        yield status, None, str(error)
        return
    except ValueError as error:  # an Identifier pydicom cannot decode
        log.warning("worklist C-FIND from %s: undecodable identifier: %s", calling, error)
        worklist.refused(who=who, how="C-FIND", reason="cannot decode the identifier")
        yield Status.CANNOT_UNDERSTAND, None, f"cannot decode identifier: {error}"
        return
    try:
        records = worklist.find(request.query, who=who)  # audited by the service
    except PacsError as error:
        status = query_status(error)
        log.warning("worklist C-FIND from %s refused (0x%04X): %s", calling, status, error)
        yield status, None, str(error)
        return
    pending = Status.PENDING_OPTIONAL_KEYS_UNSUPPORTED if request.unsupported else Status.PENDING
    count = 0
    with closing(records):
        for record in records:
            yield pending, worklist_response(record, request), ""
            count += 1
    log.info("worklist C-FIND from %s: %d items%s", calling, count,
             f" (not matched on {', '.join(request.unsupported)})" if request.unsupported
             else "")
    yield Status.SUCCESS, None, ""


def _who(assoc: Any) -> tuple[str, str]:
    """The audit trail's actor of the requestor and its calling AE title."""
    requestor = assoc.requestor
    calling = str(requestor.ae_title).strip()
    return actor("dimse", calling, requestor.address, tls_subject=subject_of(assoc)), calling


class WorklistFind:
    """One worklist C-FIND on the fast transport, from Identifier to final response."""

    def __init__(self, scp: ServiceClass, worklist: WorklistService, request: C_FIND,
                 context: PresentationContext, *, fuzzy_person_names: bool) -> None:
        self.scp = scp
        self.worklist = worklist
        self.request = request
        self.context_id = cast(int, context.context_id)
        self.syntax = context.transfer_syntax[0]
        self.fuzzy_person_names = fuzzy_person_names
        self.message_id = int(request.MessageID or 0)
        self.sop_class = str(request.AffectedSOPClassUID)
        self.max_pdu = int(scp.dimse.maximum_pdu_size or 0)

    def run(self) -> None:
        who, calling = _who(self.scp.assoc)
        answers = worklist_answers(self.worklist, self._identifier, who=who, calling=calling,
                                   fuzzy_person_names=self.fuzzy_person_names)
        with closing(answers):
            for status, identifier, comment in answers:
                if status in _PENDING:
                    if self.scp.is_cancelled(self.message_id):
                        log.info("worklist C-FIND cancelled")
                        self._send(Status.CANCEL)
                        return
                    if not self.scp.assoc.is_established:
                        return
                self._send(status, identifier, comment)

    def _identifier(self) -> Dataset:
        return decode(cast(BytesIO, self.request.Identifier), self.syntax.is_implicit_VR,
                      self.syntax.is_little_endian, self.syntax.is_deflated)

    def _send(self, status: Status, identifier: Dataset | None = None, comment: str = ""
              ) -> None:
        data = (encode(identifier, self.syntax.is_implicit_VR, self.syntax.is_little_endian)
                if identifier is not None else None)
        command = encoding.command_set(
            sop_class_uid=self.sop_class,
            command_field=encoding.C_FIND_RSP,
            message_id_responded_to=self.message_id,
            status=int(status),
            data_set=data is not None,
            error_comment=comment or None,
        )
        fast.send_when_drained(
            self.scp.assoc, encoding.p_data(self.context_id, command, data, self.max_pdu))


class PublishedWorklist:
    """Worklist C-FIND as pynetdicom's ``EVT_C_FIND`` handler protocol: ``(status,
    identifier)`` pairs, a failure as a status Dataset with its Error Comment; pynetdicom
    sends Success when the iterator ends."""

    def __init__(self, worklist: WorklistService, *, fuzzy_person_names: bool) -> None:
        self.worklist = worklist
        self.fuzzy_person_names = fuzzy_person_names

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        who, calling = _who(event.assoc)
        answers = worklist_answers(self.worklist, lambda: event.identifier, who=who,
                                   calling=calling, fuzzy_person_names=self.fuzzy_person_names)
        with closing(answers):
            count = 0
            for status, identifier, comment in answers:
                if status is Status.SUCCESS:
                    return
                if status not in _PENDING:
                    yield _failure(status, comment), None
                    return
                if event.is_cancelled:
                    log.info("worklist C-FIND cancelled after %d items", count)
                    yield int(Status.CANCEL), None
                    return
                yield int(status), identifier
                count += 1
                if not count % _CANCEL_CHECK_EVERY:
                    time.sleep(_DUL_TURN_S)  # the DUL thread, which reads a C-CANCEL, runs


# pynetdicom queues each pending response without waiting for the peer to read it: pausing
# this often lets its DUL thread read a C-CANCEL on a busy machine (as published.py does)
_CANCEL_CHECK_EVERY = 50
_DUL_TURN_S = 0.0005


def _failure(status: Status, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return answer
