"""DIMSE event handlers: parse the request, make one service call, answer with a status."""

from __future__ import annotations

import logging
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs.dimse import tuning
from pacs.dimse.inflight import InFlight
from pacs.dimse.status import Status, store_status
from pacs.services.errors import PacsError
from pacs.services.ingest import Expected, Incoming, IngestService, Origin

log = logging.getLogger(__name__)

_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


class DimseHandlers:
    """One instance per server; pynetdicom calls these from one thread per association."""

    def __init__(self, ingest: IngestService, inflight: InFlight) -> None:
        self.ingest = ingest
        self.inflight = inflight
        self.receive_files: Any = None  # the receive-file maker, once the server started

    def bindings(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    def on_conn_open(self, event: Event) -> None:
        tuning.tune_association(event.assoc)

    def on_established(self, event: Event) -> None:
        requestor = event.assoc.requestor
        log.info("association from %s at %s:%s", _calling_ae(event), requestor.address,
                 requestor.port)

    def on_conn_close(self, event: Event) -> None:
        tuning.release_association(event.assoc)
        partial = tuning.partial_dataset_file(event.assoc)
        if partial is not None:
            if self.receive_files is not None:
                self.receive_files.forget(partial)
            partial.unlink(missing_ok=True)
            log.info("removed the partial dataset of an interrupted C-STORE")

    def on_echo(self, event: Event) -> int:
        return int(Status.SUCCESS)

    def on_store(self, event: Event) -> int | Dataset:
        """C-STORE (PS3.4 B.2.3): store as received, answer after the store is durable."""
        request = cast(C_STORE, event.request)
        expected = Expected(
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
        )
        with self.inflight:
            try:
                path = event.dataset_path
                digest = self.receive_files.written(path) if self.receive_files else None
                outcome = self.ingest.store(
                    Incoming.received_file(path, digest), _origin(event), expected
                )
            except PacsError as error:
                status = store_status(error)
                log.warning("C-STORE %s from %s failed (0x%04X): %s", expected.sop_instance_uid,
                            _calling_ae(event), status, error)
                return _failure(status, str(error))
        log.debug("C-STORE %s: %s", outcome.sop_instance_uid, outcome.status)
        return int(Status.SUCCESS)


def _calling_ae(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _origin(event: Event) -> Origin:
    requestor = event.assoc.requestor
    return Origin(
        protocol="dimse",
        ae_title=_calling_ae(event),
        address=f"{requestor.address}:{requestor.port}",
    )


def _failure(status: Status, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return answer
