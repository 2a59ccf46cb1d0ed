"""DIMSE event handlers: parse the request, make one service call, answer with a status."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs.dimse import tls
from pacs.dimse.access import AccessControl, rejection
from pacs.dimse.guard import PduLimits, RefusalAudit
from pacs.dimse.inflight import InFlight
from pacs.dimse.status import Status, store_status
from pacs.dimse.transport import Transport
from pacs.dimse.transport.inline import StoreRequest
from pacs.services import metrics
from pacs.services.ae_registry import Service
from pacs.services.errors import OutOfResources, PacsError
from pacs.services.ingest import Expected, Incoming, IngestService, Origin

log = logging.getLogger(__name__)

_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


class DimseHandlers:
    """One instance per server; pynetdicom calls these from one thread per association."""

    def __init__(
        self, ingest: IngestService, inflight: InFlight, limits: PduLimits | None = None,
        refusals: RefusalAudit | None = None, access: AccessControl | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.ingest = ingest
        self.inflight = inflight
        self.limits = limits
        self.refusals = refusals
        self.access = access
        self.transport = transport or Transport()
        self.receive_files: Any = None  # the receive-file maker, once the server started
        self._established: set[int] = set()  # id() of the associations counted as open

    def bindings(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    def on_conn_open(self, event: Event) -> None:
        self.transport.accepted(event.assoc, self.limits, self._closed_by_limit,
                                self.store_received)

    def _closed_by_limit(self, assoc: Any, reason: str) -> None:
        if self.refusals is not None:
            self.refusals.note(host=str(assoc.requestor.address), action="association-aborted",
                               reason=reason.split(" (")[0],
                               ae_title=_ae_title(assoc) if assoc.is_established else None)

    def on_rejected(self, event: Event) -> None:
        """pynetdicom refused an association (PS3.8 7.1.1.9): audited, aggregated."""
        answer = event.assoc.acceptor.primitive
        code = (answer.result, answer.result_source, answer.diagnostic) if answer else ()
        why = rejection(event.assoc)  # when access control rejected it: its own reason
        reason = why.reason if why else _REJECTIONS.get(
            code, f"rejected (result, source, reason: {code})")
        requestor = event.assoc.requestor
        first = self.refusals is None or self.refusals.note(
            host=str(requestor.address), action="association-rejected", reason=reason,
            ae_title=_calling_ae(event), detail=why.detail if why else None)
        if first:  # a flood logs once between two audit writes
            log.warning("association from %s at %s rejected: %s", _calling_ae(event),
                        requestor.address, reason)

    def on_established(self, event: Event) -> None:
        self._established.add(id(event.assoc))
        metrics.association_opened()
        requestor = event.assoc.requestor
        peer = tls.peer_of(event.assoc)
        over = f" over TLS ({peer.subject or 'no client certificate'})" if peer else ""
        log.info("association from %s at %s:%s%s", _calling_ae(event), requestor.address,
                 requestor.port, over)

    def on_conn_close(self, event: Event) -> None:
        if id(event.assoc) in self._established:
            self._established.discard(id(event.assoc))
            metrics.association_closed()
        partial = self.transport.closed(event.assoc)
        if partial is not None:
            if self.receive_files is not None:
                self.receive_files.forget(partial)
            partial.unlink(missing_ok=True)
            log.info("removed the partial dataset of an interrupted C-STORE")

    def on_echo(self, event: Event) -> int:
        return int(Status.SUCCESS)

    def on_store(self, event: Event) -> int | Dataset:
        """C-STORE (PS3.4 B.2.3) by pynetdicom's Storage service class."""
        request = cast(C_STORE, event.request)
        path = event.dataset_path
        files = self.receive_files
        failure = files.failure(path) if files is not None else None
        digest = files.written(path) if files is not None and failure is None else None
        status, comment = self.store_received(
            event.assoc,
            StoreRequest(sop_class_uid=str(request.AffectedSOPClassUID),
                         sop_instance_uid=str(request.AffectedSOPInstanceUID),
                         message_id=int(request.MessageID or 0),
                         context_id=int(request._context_id or 0)),
            path, digest, failure)
        return _failure(Status(status), comment) if status else int(Status.SUCCESS)

    def store_received(self, assoc: Any, request: StoreRequest, path: Path,
                       digest: tuple[str, int] | None, failure: str | None) -> tuple[int, str]:
        """Store the data set received into ``path`` (its SHA-256 and size in ``digest`` when
        the receiver hashed it; ``failure``: why it could not be written whole), answering
        only once the store is durable: (status, error comment). Counted in the metrics
        (both transports' C-STOREs come here)."""
        started = time.perf_counter()
        outcome = metrics.FAILED
        status = int(Status.PROCESSING_FAILURE)  # unless answered otherwise (a bug raised)
        try:
            outcome, status, comment = self._store(assoc, request, path, digest, failure)
        finally:
            metrics.store("dimse", outcome, status, time.perf_counter() - started)
        return status, comment

    def _store(self, assoc: Any, request: StoreRequest, path: Path,
               digest: tuple[str, int] | None, failure: str | None) -> tuple[str, int, str]:
        """(outcome, status, error comment)"""
        if self.access is not None:
            denied = self.access.denial(assoc, Service.STORE)
            if denied is not None:  # the received data set is removed by the caller
                return (metrics.FAILED, int(store_status(denied)),
                        str(denied)[:_ERROR_COMMENT_MAX])
        expected = Expected(sop_class_uid=request.sop_class_uid,
                            sop_instance_uid=request.sop_instance_uid)
        with self.inflight:
            try:
                if failure is not None:
                    path.unlink(missing_ok=True)
                    raise OutOfResources(failure)
                outcome = self.ingest.store(
                    Incoming.received_file(path, digest), _origin(assoc), expected
                )
            except PacsError as error:
                status = store_status(error)
                log.warning("C-STORE %s from %s failed (0x%04X): %s", expected.sop_instance_uid,
                            _ae_title(assoc), status, error)
                return metrics.FAILED, int(status), str(error)[:_ERROR_COMMENT_MAX]
        log.debug("C-STORE %s: %s", outcome.sop_instance_uid, outcome.status)
        return outcome.status.value, int(Status.SUCCESS), ""


def _calling_ae(event: Event) -> str:
    return _ae_title(event.assoc)


def _ae_title(assoc: Any) -> str:
    return str(assoc.requestor.ae_title).strip()


# A-ASSOCIATE-RJ (result, source, reason/diag.) pynetdicom sends (PS3.8 9.3.4)
_REJECTIONS: dict[tuple[int | None, ...], str] = {
    (0x01, 0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02, 0x01): "user identity not accepted",
    (0x02, 0x03, 0x02): "too many associations (local limit exceeded)",
}


def _origin(assoc: Any) -> Origin:
    requestor = assoc.requestor
    return Origin(
        protocol="dimse",
        ae_title=_ae_title(assoc),
        address=f"{requestor.address}:{requestor.port}",
        tls_subject=tls.subject_of(assoc),
    )


def _failure(status: Status, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return answer
