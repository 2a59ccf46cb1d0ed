"""The composition root: reads ``Settings`` once, builds every component, starts and stops them.

Nothing else reads settings or the environment, and nothing is built at import time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import pydicom

from pacs.dimse import conformance, handoff
from pacs.dimse.commitment import CommitmentReportSender
from pacs.dimse.handoff import Dispatcher, channel_pair, receive_forever
from pacs.dimse.sender import StudySender
from pacs.dimse.server import DimseServer
from pacs.dimse.transport import Transport
from pacs.dimse.transport import install as install_transport
from pacs.services import metrics
from pacs.services.ae_registry import AeRegistry
from pacs.services.audit import AuditTrail
from pacs.services.audit_export import AuditExporter
from pacs.services.audit_message import AuditSource
from pacs.services.auth import Authenticator, TokenService
from pacs.services.bulk_import import ImportService
from pacs.services.changes import ChangeService
from pacs.services.codecs import use_chosen_decoders
from pacs.services.commitment import CommitmentService
from pacs.services.consistency import (
    UNSYNCED_WINDOW,
    AlreadyRunning,
    ConsistencyService,
    RunRecord,
)
from pacs.services.decoding_limits import MB, DecodeLimits
from pacs.services.errors import OutOfResources
from pacs.services.ingest import IngestService
from pacs.services.log_lines import ContextFilter, JsonFormatter
from pacs.services.mpps import MppsService
from pacs.services.orders import OrderService
from pacs.services.query import QueryService
from pacs.services.readiness import Check, ReadinessService, Result
from pacs.services.retrieve import Destination, RetrieveService
from pacs.services.routing import RoutingService, Worker
from pacs.services.sessions import SessionService
from pacs.services.syslog import SyslogHeader, SyslogTarget, sender_for
from pacs.services.tls_listener import BCP195_TLS12_CIPHERS, harden_tls, server_context
from pacs.services.webhooks import Webhook, WebhookService
from pacs.services.workflow import QaGate, RouteRule, WorkflowService
from pacs.services.worklist import WorklistService
from pacs.settings import AuthMode, DimseAccess, LogFormat, QaMode, Settings, TlsClientCert
from storage.blob_store import BlobStore, BlobStoreUnavailable, parse_s3_url
from storage.blobs import FileStore
from storage.index import Index
from storage.staging import Staging

if TYPE_CHECKING:
    from dicomweb.wado_services import WadoServices
    from pacs.hl7.mllp import MllpServer
    from pacs.http.context import Web
    from pacs.services.oidc import OidcVerifier
    from pacs.services.oidc_sign_in import OidcSignIn

log = logging.getLogger("pacs")


def conformance_statement(settings: Settings) -> str:
    """The DICOM Conformance Statement's tables, from the contexts this server negotiates."""
    return conformance.statement(ae_title=settings.ae_title, dimse_port=settings.dimse_port,
                                 tls_port=settings.dimse_tls_port,
                                 accept_unknown=settings.accept_unknown_sop_classes)


@dataclass
class Services:
    """Everything the front ends call, built from one ``Settings``."""

    settings: Settings
    blobs: BlobStore
    index: Index
    audit: AuditTrail
    ingest: IngestService
    consistency: ConsistencyService
    importer: ImportService
    query: QueryService
    retrieve: RetrieveService
    workflow: WorkflowService
    routing: RoutingService
    tokens: TokenService
    authenticator: Authenticator
    ae_registry: AeRegistry
    sessions: SessionService
    orders: OrderService  # imaging orders (REST and HL7)
    worklist: WorklistService  # the Modality Worklist (C-FIND, PS3.4 K)
    mpps: MppsService
    commitment: CommitmentService
    changes: ChangeService
    webhooks: WebhookService
    oidc_sign_in: OidcSignIn | None = None  # the web UI's sign-in at the identity provider


@contextmanager
def open_services(settings: Settings, *, upgrade: bool = True) -> Iterator[Services]:
    """Build storage and services; the index schema is upgraded first unless told not to."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Odd values from modalities are indexed as well as they can be, not warned about; and
    # pydicom's value validation costs about 10% of a C-STORE in pynetdicom's command sets.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    use_chosen_decoders()  # never GDCM for JPEG 2000, which a damaged codestream aborts
    blobs = _blob_store(settings)
    # a SQLite index on the store's file system commits durably with the store's own sync
    index = Index(settings.effective_database_url, sqlite_synchronous=settings.sqlite_synchronous,
                  file_system_sync=blobs.sync_for)
    audit = AuditTrail(index=index, queries=settings.audit_queries)
    try:
        if upgrade:
            index.upgrade()
        ae_registry = AeRegistry(index=index)  # --peer and --modality: serve() writes them

        def registered_store(ae_title: str) -> bool:
            entry = ae_registry.lookup(ae_title)
            return entry is not None and "store" in entry.services

        gate = QaGate(manual=settings.qa is QaMode.MANUAL, modalities=settings.modalities,
                      registered_store=registered_store)
        limits = DecodeLimits(
            max_decoded_bytes=settings.max_decoded_mb * MB,
            max_concurrent=settings.max_concurrent_decodes,
        )
        ingest = IngestService(
            blobs=blobs, index=index, overwrite=settings.overwrite,
            min_free_bytes=settings.min_free_space_mb * 1_000_000, gate=gate, limits=limits,
        )
        query = QueryService(index=index, max_results=settings.max_query_results, audit=audit)
        rules = [RouteRule(*route.split("=", 1)) for route in settings.routes]
        workflow = WorkflowService(
            index=index, blobs=blobs, gate=gate, rules=rules,
            stable_after=dt.timedelta(seconds=settings.stable_seconds),
            retention=dt.timedelta(days=settings.retention_days), limits=limits,
            node=node_id(settings), lease=dt.timedelta(seconds=settings.study_lease_seconds),
        )
        retrieve = RetrieveService(query=query, blobs=blobs, destinations=ae_registry,
                                   audit=audit.record, limits=limits)
        tokens = TokenService(index=index)
        oidc = _oidc(settings)
        webhooks = [Webhook.parse(text) for text in settings.webhooks]
        changes = ChangeService(index=index, webhooks=webhooks,
                                retention=dt.timedelta(days=settings.change_retention_days))
        secret = settings.webhook_secret
        services = Services(
            settings=settings,
            blobs=blobs,
            index=index,
            audit=audit,
            ingest=ingest,
            consistency=ConsistencyService(blobs=blobs, index=index),
            importer=ImportService(ingest),
            query=query,
            retrieve=retrieve,
            workflow=workflow,
            routing=RoutingService(
                index=index, retrieve=retrieve,
                sender=StudySender(settings.ae_title, transport=lambda: _transport(settings)),
                retry_base=dt.timedelta(seconds=settings.route_retry_seconds),
                max_attempts=settings.route_max_attempts,
                node=node_id(settings),
                lease=dt.timedelta(seconds=settings.route_lease_seconds),
            ),
            tokens=tokens,
            authenticator=Authenticator(tokens=tokens, oidc=oidc),
            ae_registry=ae_registry,
            sessions=SessionService(index=index),
            orders=OrderService(index=index),
            mpps=MppsService(index=index),
            commitment=CommitmentService(
                index=index, registry=ae_registry, retrieve_ae_title=settings.ae_title,
                sender=CommitmentReportSender(settings.ae_title,
                                              transport=lambda: _transport(settings)),
                node=node_id(settings)),
            changes=changes,
            webhooks=WebhookService(
                index=index, changes=changes, webhooks=webhooks,
                secret=secret.get_secret_value().encode() if secret is not None else None,
                timeout=settings.webhook_timeout_seconds,
                retry_base=dt.timedelta(seconds=settings.webhook_retry_seconds),
                retry_max=dt.timedelta(seconds=settings.webhook_retry_max_seconds),
                node=node_id(settings), lease=dt.timedelta(seconds=settings.route_lease_seconds),
            ),
            oidc_sign_in=_oidc_sign_in(settings, index, oidc),
            worklist=WorklistService(index=index, max_results=settings.max_query_results,
                                     audit=audit),
        )
        yield services
    finally:
        audit.close()  # the queued query events, before the index goes
        index.dispose()
        blobs.close()


def _blob_store(settings: Settings) -> BlobStore:
    """The file store under the data folder, or the object store of ``--blob-store`` (checked
    to be reachable: :class:`OutOfResources` naming the problem otherwise). Either stages in
    a folder of this process's own under ``DATA_DIR/tmp``."""
    if settings.blob_store is None:
        return FileStore(settings.data_dir, node_id(settings))
    try:
        from storage.s3 import S3Store  # boto3 only for an object store
    except ImportError as error:
        raise OutOfResources(f"--blob-store {settings.blob_store} needs boto3 (pip install "
                             f"'pacs[s3]'): {error}") from error
    bucket, prefix = parse_s3_url(settings.blob_store)
    staging = Staging(settings.data_dir / "tmp", node_id(settings))
    try:
        store = S3Store(bucket=bucket, prefix=prefix, staging=staging)
    except BlobStoreUnavailable as error:  # an AWS_* variable boto3 refuses
        staging.close()
        raise OutOfResources(f"--blob-store {settings.blob_store}: {error}") from error
    try:
        store.check()
    except BlobStoreUnavailable as error:
        store.close()
        raise OutOfResources(f"--blob-store {settings.blob_store}: {error}") from error
    return store


def _oidc(settings: Settings) -> OidcVerifier | None:
    """The OIDC bearer-token verifier when an issuer is configured (its keys are fetched on
    first use, so a start with the identity provider down is not an error)."""
    if settings.oidc_issuer is None or settings.oidc_audience is None:
        return None
    from pacs.services.oidc import build_verifier  # PyJWT only when OIDC is configured

    return build_verifier(
        issuer=settings.oidc_issuer, audience=settings.oidc_audience,
        jwks_file=settings.oidc_jwks_file, role_claim=settings.oidc_role_claim,
    )


def _oidc_sign_in(settings: Settings, index: Index,
                  oidc: OidcVerifier | None) -> OidcSignIn | None:
    """The web UI's sign-in at the issuer (authorization-code flow with PKCE) when a client
    id is configured; its endpoints are discovered at the first sign-in."""
    if oidc is None or settings.oidc_client_id is None:
        return None
    from pacs.services.oidc_sign_in import OidcSignIn

    secret = settings.oidc_client_secret
    return OidcSignIn(
        index=index, issuer=oidc.issuer, client_id=settings.oidc_client_id, access=oidc,
        client_secret=secret.get_secret_value() if secret is not None else None,
        redirect_uri=settings.oidc_redirect_uri,
    )


def _run_record(index: Index) -> RunRecord | None:
    """The lock and run record of a SQLite index on a file (None on PostgreSQL: several
    servers may share it, and a store's blob is durable before its row there)."""
    database = index.url.database
    if not index.is_sqlite or not database or database == ":memory:":
        return None
    return RunRecord(Path(f"{database}-serve.lock"))


def node_id(settings: Settings) -> str:
    """This server's name among several on one database: the setting, else host and pid."""
    if settings.node_id:
        return settings.node_id
    return f"{socket.gethostname()[:40]}-{os.getpid()}"


def upgrade_database(settings: Settings) -> str:
    index = Index(settings.effective_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        index.upgrade()
        return index.describe()
    finally:
        index.dispose()


TEXT_FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"


def configure_logging(level: str, log_format: LogFormat = LogFormat.TEXT) -> None:
    """Log lines to stderr, as text or one JSON object per line (``pacs.services.log_lines``).
    In JSON, what would otherwise reach stderr in another form goes through logging too:
    Python's warnings and the tracebacks of exceptions no one caught."""
    handler = logging.StreamHandler()
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
        handler.addFilter(ContextFilter())
        logging.captureWarnings(True)
        threading.excepthook = _log_thread_exception
        sys.excepthook = _log_exception
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # pynetdicom logs every association at INFO; keep its chatter at WARNING unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("uncaught exception in thread %s", name,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def _log_exception(kind: type[BaseException], value: BaseException,
                   traceback: TracebackType | None) -> None:
    log.critical("uncaught exception", exc_info=(kind, value, traceback))


_TRANSPORT: Transport | None = None


def _transport(settings: Settings) -> Transport:
    """The process's DIMSE transport (``PACS_DIMSE_TRANSPORT``), installed the first time it is
    asked for: by the DIMSE server as it is made, or by the routing sender as it first sends
    (a command that only opens the services installs nothing)."""
    global _TRANSPORT
    if _TRANSPORT is None:
        _TRANSPORT = install_transport(str(settings.dimse_transport))
    elif _TRANSPORT.name != settings.dimse_transport:
        raise RuntimeError(f"the DIMSE transport is {_TRANSPORT.name} in this process already")
    return _TRANSPORT


def _dimse_server(settings: Settings, services: Services) -> DimseServer:
    # pynetdicom writes received datasets with tempfile: keep them on the store's file
    # system, so that a store is a rename, not a copy.
    tempfile.tempdir = str(services.ingest.temp_dir())
    return DimseServer(
        ae_title=settings.ae_title,
        host=settings.dimse_host,
        port=settings.dimse_port,
        ingest=services.ingest,
        query=services.query,
        retrieve=services.retrieve,
        worklist=services.worklist,
        fuzzy_person_names=settings.fuzzy_person_names,
        pending_interval=settings.retrieve_pending_interval,
        max_associations=settings.max_associations,
        max_pdu_size=settings.max_pdu_size,
        accept_unknown_sop_classes=settings.accept_unknown_sop_classes,
        read_timeout=settings.dimse_read_timeout,
        max_connections_per_host=settings.max_connections_per_host,
        refusals=services.audit.refusal,
        registry=(services.ae_registry
                  if settings.effective_dimse_access is DimseAccess.REGISTERED else None),
        tls_port=settings.dimse_tls_port or 0,
        tls_context=_dimse_tls_context(settings),
        transport=_transport(settings),
        mpps=services.mpps,
        commitment=services.commitment,
    )


def register_flags(settings: Settings, services: Services) -> None:
    """``--peer`` and ``--modality`` into the AE registry (the listening process, at start:
    the workers and the CLI's commands never rewrite it)."""
    peers = [Destination(p.ae_title, p.host, p.port) for p in settings.peers]
    kept = services.ae_registry.sync_flags(peers, settings.modalities)
    for title in kept:
        log.info("AE %s: registered with pacs ae add, left as it is (the flag naming it "
                 "changes nothing)", title)


_CLIENT_CERTS = {TlsClientCert.REQUIRED: ssl.CERT_REQUIRED,
                 TlsClientCert.OPTIONAL: ssl.CERT_OPTIONAL, TlsClientCert.NONE: ssl.CERT_NONE}


def _dimse_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The DICOM TLS listener's context (PS3.15 Annex B, BCP 195), when it has a port."""
    if settings.dimse_tls_port is None or settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_context(settings.tls_cert, settings.tls_key, ca=settings.tls_ca,
                          client_certs=_CLIENT_CERTS[settings.tls_client_cert])


def _web(settings: Settings, services: Services) -> Web:
    from pacs.http.context import Web, WebOptions

    origins, methods = settings.effective_cors
    return Web(
        query=services.query,
        retrieve=services.retrieve,
        ingest=services.ingest,
        options=WebOptions(
            fuzzy_person_names=settings.fuzzy_person_names,
            max_request_bytes=settings.max_request_mb * 1_000_000,
            cors_origins=origins,
            cors_methods=methods,
        ),
        workflow=services.workflow,
        routing=services.routing,
        tokens=services.tokens,
        ae_registry=services.ae_registry,
        sessions=services.sessions,
        oidc_sign_in=services.oidc_sign_in,
        orders=services.orders,
        mpps=services.mpps,
        commitment=services.commitment,
        changes=services.changes,
    )


def _wado(settings: Settings, services: Services) -> WadoServices:
    from dicomweb.wado_services import wado_services

    return wado_services(services.retrieve, cache_dir=settings.data_dir / "cache" / "metadata")


def _background(settings: Settings, services: Services) -> list[Worker]:
    """The QA workflow's background tasks, in the listening process only: stability (study
    checks and routing plans), purge of rejected studies, and the routing jobs. Their state is
    in the index, so a restart resumes them; servers sharing the index claim each study's
    check or purge and each job under a lease, so that one server does it."""
    resumed = services.routing.resume(only_server=services.index.is_sqlite)
    if resumed:
        log.info("resuming %d routing jobs left running", resumed)
    released = services.workflow.resume(only_server=services.index.is_sqlite)
    if released:
        log.info("taking up %d studies' stability checks or purges left unfinished", released)
    settle_every = min(max(settings.stable_seconds / 4, 0.2), 5.0)
    purge_every = 60.0

    def purge() -> None:
        services.workflow.purge()

    def prune_changes() -> None:
        services.changes.prune()

    return [
        Worker("qa-stability", services.workflow.settle, settle_every),
        Worker("qa-purge", purge, purge_every),
        Worker("routing", services.routing.run_due, 0.5),
        Worker("storage-commitment", services.commitment.run_due, 1.0),
        # the change feed: number committed changes (and plan their webhook deliveries),
        # deliver, and drop those past the retention period
        # (numbered at most 4 times a second while webhooks wait for the numbers, once a
        # second otherwise: a reader of the feed numbers what waits before it reads)
        Worker("change-sequencer", services.changes.sequence_pass,
               0.25 if settings.webhooks else 1.0),
        Worker("webhooks", services.webhooks.run_due, 0.25),
        Worker("change-prune", prune_changes,
               min(max(settings.change_retention_days * 86400 / 4, 0.2), purge_every)),
    ]


def _audit_exporter(settings: Settings, services: Services) -> AuditExporter | None:
    """The export of the audit trail to syslog (``--audit-syslog``), in the listening process
    only; None when not configured."""
    if settings.audit_syslog is None:
        return None
    target = SyslogTarget.parse(settings.audit_syslog)
    header = SyslogHeader.here()
    return AuditExporter(
        index=services.index,
        sender=sender_for(target, ca_file=settings.tls_ca, cert_file=settings.tls_cert,
                          key_file=settings.tls_key),
        source=AuditSource(ae_title=settings.ae_title, hostname=header.hostname),
        header=header,
        cursor_file=settings.data_dir / "audit-syslog.cursor",
        max_bytes=target.max_bytes,
        target=str(target),
    )



def _hl7_listener(settings: Settings, services: Services) -> MllpServer | None:
    """The HL7 v2 MLLP listener for imaging orders (``--hl7-port``), on the DIMSE host."""
    if not settings.hl7_port:
        return None
    from pacs.hl7.mllp import MllpServer
    from pacs.hl7.orders import OrderFeed

    return MllpServer(host=settings.dimse_host, port=settings.hl7_port,
                      handler=OrderFeed(services.orders),
                      max_message_bytes=settings.hl7_max_message_kb * 1024,
                      read_timeout=settings.hl7_read_timeout,
                      max_connections=settings.hl7_max_connections)


def serve(settings: Settings) -> int:
    """Run the DIMSE listener and the HTTP server in this process until SIGINT/SIGTERM, with
    ``dimse_processes - 1`` worker processes serving a share of the associations; every
    process of the run counts its metrics into one fresh folder, removed at the end."""
    configure_logging(settings.log_level, settings.log_format)
    with metrics.run_directory() as metrics_folder:
        metrics.enable(metrics_folder)
        return _serve(settings, metrics_folder)


def _serve(settings: Settings, metrics_folder: Path) -> int:
    # The web stack is imported here, not with this module: the DIMSE worker processes
    # import this module and never serve HTTP (about 18 MB less each).
    import uvicorn

    from pacs.http.auth import Access
    from pacs.http.security import RefusalAudit
    from pacs.http.server import HttpLimits, HttpServer, guarded_protocol
    from pacs.web import create_app

    with open_services(settings) as services:
        services.index.watch_errors(metrics.index_error)
        run = _run_record(services.index)
        try:
            crashed = run.claim() if run is not None else None
        except AlreadyRunning as error:
            log.error("%s", error)
            return 1
        swept = services.blobs.staging.sweep()
        if swept:
            log.info("removed %d partial files left by an earlier run", swept)
        if crashed is not None and services.ingest.rows_may_outrun_blobs:
            # before any listener opens: no store is under way
            log.warning("the last run (started %s) did not stop: checking its newest rows",
                        crashed.isoformat(timespec="seconds"))
            # wider than the stores that can be under way at once (each association, STOW)
            services.consistency.recover_unsynced(since=crashed, newest=max(
                UNSYNCED_WINDOW, 2 * settings.max_associations * settings.effective_dimse_processes
            ))
        if run is not None:
            run.begin()
        if settings.orphan_sweep:  # before any listener opens: no store is under way
            services.consistency.sweep_orphans(grace_s=settings.orphan_grace_seconds)
        register_flags(settings, services)
        dimse = _dimse_server(settings, services)
        workers = _Workers(settings)
        http_started = threading.Event()

        def listeners() -> dict[Check, Result]:
            if http.should_exit:  # a graceful stop under way: send no new work here
                return {Check.DIMSE: Result.STOPPING, Check.HTTP: Result.STOPPING}
            return {
                Check.DIMSE: Result.STARTING if not dimse.started
                else Result.OK if dimse.listening() and workers.ready() else Result.FAILED,
                Check.HTTP: Result.OK if http_started.is_set() else Result.STARTING,
            }

        readiness = ReadinessService(index=services.index, blobs=services.blobs,
                                     listeners=listeners, timeout=settings.readiness_timeout)
        scrape = metrics.Scrape(metrics_folder, index=services.index,
                                live_pids=lambda: {os.getpid(), *workers.pids()},
                                timeout=settings.readiness_timeout)
        refusals = RefusalAudit(services.audit.refusal)
        required = settings.auth is AuthMode.REQUIRED
        access = Access(
            authenticator=services.authenticator if required else None,
            sessions=services.sessions if required else None,
            refusals=services.audit.refusal, record=services.audit.record,
            metrics_token=(settings.metrics_token.get_secret_value()
                           if settings.metrics_token is not None else None),
        )
        app = create_app(web=_web(settings, services), wado_services=_wado(settings, services),
                         readiness=readiness.check, access=access, audit=refusals,
                         metrics=scrape.render)
        limits = HttpLimits(
            header_timeout=settings.http_header_timeout,
            max_connections=settings.http_max_connections,
            max_connections_per_host=settings.http_max_connections_per_host,
        )
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            http=guarded_protocol(limits, refusals.refused_connection),
            log_level=settings.log_level.lower(),
            access_log=False,  # pacs.http.telemetry logs each request, by its route
            log_config=None,  # uvicorn's lines go through pacs's handler, in its format
            lifespan="on",
            # HTTPS only on this port when a certificate is given: uvicorn wraps the socket,
            # a plain-HTTP request fails the handshake (no redirect, no fallback)
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            ssl_ciphers=BCP195_TLS12_CIPHERS,
        )
        if config.is_ssl:
            config.load()  # builds config.ssl now (uvicorn would at start-up) to tighten it
            assert config.ssl is not None
            harden_tls(config.ssl)
        http = HttpServer(config, started=http_started)
        hl7 = _hl7_listener(settings, services)
        background = _background(settings, services)
        try:
            exporter = _audit_exporter(settings, services)
        except (ssl.SSLError, OSError) as error:
            log.error("--audit-syslog: the TLS files cannot be used: %s", error)
            return 1
        if exporter is not None:
            exporter.start()
        try:
            workers.start()
            try:
                dimse.start(dispatcher=workers.dispatcher())
            except OSError as error:
                ports = f"{settings.dimse_port}" + (f" or {settings.dimse_tls_port} (TLS)"
                                                    if settings.dimse_tls_port else "")
                log.error("cannot listen for DIMSE on %s:%s: %s", settings.dimse_host,
                          ports, error.strerror or error)
                return 1
            if hl7 is not None:
                try:
                    hl7.start()
                except OSError as error:
                    log.error("cannot listen for HL7 on %s:%s: %s", settings.dimse_host,
                              settings.hl7_port, error.strerror or error)
                    return 1
                log.info("HL7 orders (MLLP) on port %d", hl7.port)
            log.info(
                "pacs serving: DIMSE %s on port %d%s (%d processes, access: %s), HTTP on "
                "%s://%s:%d (index: %s, blobs: %s, data: %s)",
                settings.ae_title, dimse.port,
                f", DICOM TLS on port {dimse.tls_port} (client certificates: "
                f"{settings.tls_client_cert})" if dimse.tls is not None else "",
                workers.count + 1, settings.effective_dimse_access.value,
                "https" if config.is_ssl else "http", settings.http_host,
                settings.http_port, services.index.describe(), services.blobs.describe(),
                settings.data_dir,
            )
            for worker in background:
                worker.start()
            http.run()
        finally:
            log.info("shutting down: finishing in-flight stores")
            for worker in background:
                worker.stop()
            if hl7 is not None:
                hl7.stop()
            dimse.stop()
            workers.stop()
            services.blobs.staging.sweep()  # partial receives of aborted associations
            if exporter is not None:
                services.audit.flush()  # the queued query events go out with the rest
                exporter.stop()
            if run is not None:
                run.end()
        if http.failed:
            log.error("the HTTP server could not start on %s:%d", settings.http_host,
                      settings.http_port)
            return 1
    log.info("stopped")
    return 0


class _Workers:
    """The DIMSE worker processes: started before listening, stopped after.

    Each is a plain ``python`` child (not ``multiprocessing``, whose spawn start also runs a
    resource-tracker process of about 13 MB) with one end of a Unix socket pair: it receives
    its settings and then the connections to serve over it, says when it is ready, and ends
    when the listening process closes its end, or dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.effective_dimse_processes - 1
        self._processes: list[subprocess.Popen[bytes]] = []
        self._channels: list[socket.socket] = []

    def start(self, timeout: float = 120.0) -> None:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        settings = json.dumps(self.settings.model_dump(mode="json")).encode()
        for number in range(self.count):
            mine, theirs = channel_pair()
            process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno()), str(number + 1)],
                pass_fds=[theirs.fileno()], env=environment, stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self._processes.append(process)
            self._channels.append(mine)
            mine.sendall(settings)
        for channel, process in zip(self._channels, self._processes, strict=True):
            channel.settimeout(timeout)
            try:
                answer = channel.recv(64)
            except TimeoutError:
                answer = b""
            channel.settimeout(None)
            if answer != _READY:
                raise RuntimeError(
                    f"DIMSE worker (pid {process.pid}) did not start: exit code {process.poll()}"
                )

    def ready(self) -> bool:
        return all(process.poll() is None for process in self._processes)

    def pids(self) -> list[int]:
        """The workers still running."""
        return [process.pid for process in self._processes if process.poll() is None]

    def dispatcher(self) -> Dispatcher | None:
        return Dispatcher(self._channels) if self._channels else None

    def stop(self, timeout: float = 60.0) -> None:
        for channel in self._channels:
            handoff.stop(channel)
        for process in self._processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("DIMSE worker (pid %d) did not stop in %.0f s", process.pid, timeout)
                process.kill()
                process.wait()


_READY = b"ready"
_MAX_SETTINGS = 1 << 20
_WORKER_MAIN = "import sys; from pacs.serve import worker_main; sys.exit(worker_main(sys.argv[1:]))"


def worker_main(argv: list[str]) -> int:
    """Entry of a DIMSE worker process: ``argv`` is the channel's descriptor and a number."""
    channel = socket.socket(fileno=int(argv[0]))
    threading.current_thread().name = f"pacs-dimse-{argv[1]}"
    settings = Settings.model_validate(json.loads(channel.recv(_MAX_SETTINGS)))
    run_dimse_worker(settings, channel)
    return 0


def run_dimse_worker(settings: Settings, channel: socket.socket) -> None:
    """A DIMSE worker process: serves the associations the listening process hands over
    until it closes the channel."""
    configure_logging(settings.log_level, settings.log_format)
    metrics.enable_from_environment()  # the listening process's folder
    # The listening process decides when to stop (SIGINT reaches the whole process group);
    # a SIGTERM of our own only raises a flag, checked by the main thread.
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    with open_services(settings, upgrade=False) as services:
        services.index.watch_errors(metrics.index_error)
        dimse = _dimse_server(settings, services)
        dimse.start(listen=False,
                    report_closed=lambda host: handoff.report_closed(channel, host))

        def receive() -> None:
            receive_forever(channel, dimse.adopt)
            stop.set()  # the listening process closed the channel, or died

        receiver = threading.Thread(target=receive, name="dimse-handoff", daemon=True)
        receiver.start()
        channel.sendall(_READY)
        while not stop.wait(0.2):
            pass
        channel.close()
        dimse.stop()
