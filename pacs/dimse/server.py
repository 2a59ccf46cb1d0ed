"""The DIMSE listener: a pynetdicom AE with the Verification, Storage and Q/R SCPs.

A peer is bounded (``guard.py``): the listening process closes at once a connection from an
address that already holds ``max_connections_per_host`` (counting those served by workers);
every association reads PDUs within ``limits`` (size by type, time to arrive), and its set-up
(ARTIM, PS3.8 9.1.5) and idleness (network timeout) last at most ``limits.read_timeout``.

With a TLS context, a second listener on ``tls_port`` serves the same AE and services over
DICOM TLS (PS3.15 Annex B): its connections are accepted, counted and handed off like plain
ones, and wrapped in the thread that serves them (``tls.py``).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from pacs.dimse import qr
from pacs.dimse.access import AccessControl, Registry
from pacs.dimse.commitment import CommitmentHandlers
from pacs.dimse.contexts import UnknownStorageClasses, scp_contexts
from pacs.dimse.guard import ConnectionCount, PduLimits, RefusalAudit
from pacs.dimse.handlers import DimseHandlers
from pacs.dimse.handoff import Dispatcher
from pacs.dimse.inflight import InFlight
from pacs.dimse.mpps import MppsHandlers
from pacs.dimse.qr import QueryRetrieveServices
from pacs.dimse.tls import TlsAcceptor
from pacs.dimse.transport import Transport
from pacs.dimse.transport.serving import CountedHandler, register_server, unregister_server
from pacs.services.commitment import CommitmentService
from pacs.services.ingest import IngestService
from pacs.services.mpps import MppsService
from pacs.services.query import QueryService
from pacs.services.retrieve import RetrieveService
from pacs.services.worklist import WorklistService

log = logging.getLogger(__name__)


class DimseServer:
    """Listens on ``host:port`` (and, with ``tls_context``, on ``host:tls_port`` for DICOM
    TLS) as ``ae_title``; one thread per association."""

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        ingest: IngestService,
        query: QueryService | None = None,
        retrieve: RetrieveService | None = None,
        worklist: WorklistService | None = None,
        fuzzy_person_names: bool = True,
        pending_interval: float = 0.0,
        max_associations: int = 32,
        max_pdu_size: int = 1 << 20,
        accept_unknown_sop_classes: bool = True,
        read_timeout: float = 30.0,
        max_connections_per_host: int = 16,
        refusals: Callable[..., bool] | None = None,
        registry: Registry | None = None,
        tls_port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        transport: Transport,
        mpps: MppsService | None = None,
        commitment: CommitmentService | None = None,
    ) -> None:
        """``registry``: only the AEs it admits may associate, for their services, and only
        to ``ae_title`` (``access.py``); None: any calling AE, any called AE title.
        ``transport``: installed already (``transport.install``). ``mpps``, ``commitment``:
        the MPPS and Storage Commitment SCPs (``mpps.py``, ``commitment.py``)."""
        self.transport = transport
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.inflight = InFlight()
        self.receive_folder = ingest.temp_dir()
        self._receive_files: Any = None
        self.limits = PduLimits(max_pdu=max_pdu_size, read_timeout=read_timeout)
        self.connections = ConnectionCount(max_connections_per_host)
        self.refusals = RefusalAudit(refusals)
        self.access = (AccessControl(registry=registry, ae_title=ae_title, refusals=self.refusals)
                       if registry is not None else None)
        self.query_retrieve = (
            QueryRetrieveServices(query, retrieve, ae_title, fuzzy_person_names, self.access,
                                  pending_interval, worklist)
            if query is not None and retrieve is not None else None
        )
        self.handlers = DimseHandlers(ingest, self.inflight, self.limits, self.refusals,
                                      self.access, transport)
        self.n_services: list[MppsHandlers | CommitmentHandlers] = [
            *([MppsHandlers(mpps, self.access)] if mpps is not None else []),
            *([CommitmentHandlers(commitment, self.access, transport)]
              if commitment is not None else []),
        ]
        self.tls_port = tls_port
        self.tls = (TlsAcceptor(tls_context, timeout=read_timeout, refusals=self.refusals)
                    if tls_context is not None else None)
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = max_pdu_size
        self.ae.acse_timeout = read_timeout  # ARTIM too (pynetdicom sets one from the other)
        self.ae.network_timeout = read_timeout  # an idle association is aborted after it
        self.ae.require_called_aet = False
        self.accept_unknown_sop_classes = accept_unknown_sop_classes
        self._server: Any = None
        self._tls_server: Any = None
        self._listening = False
        self._listeners: list[tuple[Any, threading.Thread]] = []  # (server, its thread)

    def start(
        self, *, listen: bool = True, dispatcher: Dispatcher | None = None,
        report_closed: Callable[[str], None] | None = None,
    ) -> None:
        """Listen on ``host:port`` (handing connections to ``dispatcher`` when given), or, with
        ``listen=False`` (a worker process), only serve connections passed to :meth:`adopt`,
        telling ``report_closed(host)`` when each one closes."""
        self._receive_files = self.transport.receive_files(self.receive_folder)
        self.handlers.receive_files = self._receive_files
        contexts = scp_contexts()
        unknown = UnknownStorageClasses(contexts, accept_stores=self.accept_unknown_sop_classes)
        requested = self.access.before(unknown) if self.access is not None else unknown
        handlers: list[Any] = [*self.handlers.bindings(), (evt.EVT_REQUESTED, requested)]
        for served in self.n_services:
            handlers += served.bindings()
        if self.transport.fast_service_classes:
            qr.install(self.query_retrieve, self.transport,
                       accept_unknown_sop_classes=self.accept_unknown_sop_classes)
        elif self.query_retrieve is not None:
            from pacs.dimse.published import PublishedQueryRetrieve

            handlers += PublishedQueryRetrieve(self.query_retrieve, self.transport).bindings()

        def make(port: int, tls: TlsAcceptor | None) -> Any:
            server: Any = self.ae.make_server(
                (self.host, port),
                ae_title=self.ae_title,
                contexts=contexts,
                evt_handlers=handlers,
                server_class=_ListeningServer if listen else _AdoptingServer,
                request_handler=CountedHandler,
            )
            server.dispatcher = dispatcher
            server.connections = self.connections
            server.refusals = self.refusals
            server.tls = tls
            if not listen:
                server.report_closed = report_closed
            register_server(self.ae, server)
            return server

        self._server = make(self.port, None)
        if self.tls is not None:
            try:
                self._tls_server = make(self.tls_port, self.tls)
            except BaseException:
                self._close(self._server)
                self._server = None
                raise
        if listen and dispatcher is not None:
            dispatcher.start(self.connections.release)
        self._listening = listen
        if listen:
            self.port = self._listen(self._server, "dimse-listener", "DIMSE")
            if self._tls_server is not None:
                self.tls_port = self._listen(self._tls_server, "dimse-tls-listener",
                                             "DICOM TLS")

    def _listen(self, server: Any, thread: str, what: str) -> int:
        accepting = threading.Thread(target=server.serve_forever, name=thread, daemon=True)
        accepting.start()
        self._listeners.append((server, accepting))
        port = int(server.server_address[1])
        log.info("%s %s listening on %s:%d", what, self.ae_title, self.host, port)
        return port

    @property
    def started(self) -> bool:
        """Whether :meth:`start` opened the listeners (the readiness probe's "starting")."""
        return bool(self._listeners)

    def listening(self) -> bool:
        """Whether every listener still accepts: its socket open, its thread running."""
        return bool(self._listeners) and all(
            thread.is_alive() and server.socket.fileno() != -1
            for server, thread in self._listeners)

    def _close(self, server: Any) -> None:
        server.server_close()
        unregister_server(self.ae, server)

    def adopt(self, connection: socket.socket, address: tuple[str, int], tls: bool = False
              ) -> None:
        """Serve a connection accepted by the listening process (on its TLS port: ``tls``)."""
        server = self._tls_server if tls else self._server
        if server is None:
            connection.close()
            return
        server.process_request(connection, address)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, abort open associations, wait for in-flight stores to finish."""
        if self._server is None:
            return
        servers = [self._server, *([self._tls_server] if self._tls_server else [])]
        self._server = self._tls_server = None
        for server in servers:
            if self._listening:
                server.shutdown()  # stops serve_forever, closes the socket
            else:
                self._close(server)
        for server in servers:
            for assoc in list(server.active_associations):
                assoc.abort()
        if not self.inflight.wait_idle(timeout):
            log.warning(
                "%d DIMSE requests still running after %.0f s", self.inflight.count, timeout
            )
        if self._receive_files is not None:
            self._receive_files.stop()


class _ListeningServer(ThreadedAssociationServer):
    """pynetdicom's threaded server: refuses a host's connections beyond its limit, and passes
    some connections to worker processes."""

    dispatcher: Dispatcher | None = None
    connections: ConnectionCount
    refusals: RefusalAudit
    tls: TlsAcceptor | None = None  # a DICOM TLS port: wrapped where it is served

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        if not self.connections.admit(host):
            request.close()  # before it costs a thread or a byte of reading
            if self.refusals.note(host=host, action=REFUSED, reason=TOO_MANY_CONNECTIONS):
                log.warning("refusing DIMSE connections from %s: it has %d open already",
                            host, self.connections.limit)
            return
        if self.dispatcher is not None and self.dispatcher.hand_off(
                request, client_address, tls=self.tls is not None):
            request.close()  # the worker holds its own descriptor of the connection
            return
        _serve(self, request, client_address)

    def connection_closed(self, client_address: Any) -> None:
        self.connections.release(str(client_address[0]))


class _AdoptingServer(ThreadedAssociationServer):
    """A server that never binds: its connections arrive through :meth:`DimseServer.adopt`,
    and their closing is reported to the listening process, which counts them."""

    dispatcher: Dispatcher | None = None
    connections: ConnectionCount
    refusals: RefusalAudit
    tls: TlsAcceptor | None = None
    report_closed: Callable[[str], None] | None = None

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass

    def process_request(self, request: Any, client_address: Any) -> None:
        _serve(self, request, client_address)

    def connection_closed(self, client_address: Any) -> None:
        if self.report_closed is not None:
            self.report_closed(str(client_address[0]))


def _serve(server: Any, request: Any, client_address: Any) -> None:
    """pynetdicom's thread per connection; a connection that gets none is closed (and no
    longer counted)."""
    try:
        ThreadedAssociationServer.process_request(server, request, client_address)
    except BaseException:
        server.connection_closed(client_address)
        raise


REFUSED = "connection-refused"
TOO_MANY_CONNECTIONS = "too many connections from this address"
