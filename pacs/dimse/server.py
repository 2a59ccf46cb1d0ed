"""The DIMSE listener: a pynetdicom AE with the Verification and Storage SCPs."""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import AE

from pacs.dimse import tuning
from pacs.dimse.contexts import storage_scp_contexts
from pacs.dimse.handlers import DimseHandlers
from pacs.dimse.inflight import InFlight
from pacs.services.ingest import IngestService

log = logging.getLogger(__name__)


class DimseServer:
    """Listens on ``host:port`` as ``ae_title``; one thread per association."""

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        ingest: IngestService,
        max_associations: int = 32,
        max_pdu_size: int = 0,
    ) -> None:
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.inflight = InFlight()
        self.handlers = DimseHandlers(ingest, self.inflight)
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = max_pdu_size
        self.ae.require_called_aet = False
        self._server: Any = None

    def start(self) -> None:
        tuning.enable_chunked_receive()
        self._server = self.ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
            ae_title=self.ae_title,
            contexts=storage_scp_contexts(),
        )
        self.port = self._server.server_address[1]
        log.info("DIMSE %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, abort open associations, wait for in-flight stores to finish."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        for assoc in list(server.active_associations):
            assoc.abort()
        if not self.inflight.wait_idle(timeout):
            log.warning(
                "%d DIMSE requests still running after %.0f s", self.inflight.count, timeout
            )
