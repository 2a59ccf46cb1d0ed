"""The composition root: reads ``Settings`` once, builds every component, starts and stops them.

Nothing else reads settings or the environment, and nothing is built at import time.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import pydicom
import uvicorn

from dicomweb.app import create_app
from pacs.dimse.server import DimseServer
from pacs.services.bulk_import import ImportService
from pacs.services.consistency import ConsistencyService
from pacs.services.ingest import IngestService
from pacs.settings import Settings
from storage.blobs import FileStore
from storage.index import Index

log = logging.getLogger("pacs")


@dataclass
class Services:
    """Everything the front ends call, built from one ``Settings``."""

    settings: Settings
    blobs: FileStore
    index: Index
    ingest: IngestService
    consistency: ConsistencyService
    importer: ImportService


@contextmanager
def open_services(settings: Settings, *, upgrade: bool = True) -> Iterator[Services]:
    """Build storage and services; the index schema is upgraded first unless told not to."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Odd values from modalities are indexed as well as they can be, not warned about.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    blobs = FileStore(settings.data_dir)
    index = Index(settings.effective_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        if upgrade:
            index.upgrade()
        ingest = IngestService(blobs=blobs, index=index, overwrite=settings.overwrite)
        services = Services(
            settings=settings,
            blobs=blobs,
            index=index,
            ingest=ingest,
            consistency=ConsistencyService(blobs=blobs, index=index),
            importer=ImportService(ingest),
        )
        yield services
    finally:
        index.dispose()


def upgrade_database(settings: Settings) -> str:
    index = Index(settings.effective_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        index.upgrade()
        return index.describe()
    finally:
        index.dispose()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs every association at INFO; keep its chatter at WARNING unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    """Run the DIMSE listener and the HTTP server in this process until SIGINT/SIGTERM."""
    configure_logging(settings.log_level)
    with open_services(settings) as services:
        swept = services.blobs.sweep_tmp()
        if swept:
            log.info("removed %d partial files left by an earlier run", swept)
        # pynetdicom writes received datasets with tempfile: keep them on the store's file
        # system, so that a store is a rename, not a copy.
        tempfile.tempdir = str(services.ingest.temp_dir())

        dimse = DimseServer(
            ae_title=settings.ae_title,
            host=settings.dimse_host,
            port=settings.dimse_port,
            ingest=services.ingest,
            max_associations=settings.max_associations,
            max_pdu_size=settings.max_pdu_size,
        )
        http_started = threading.Event()

        def is_ready() -> bool:
            return http_started.is_set() and dimse.port != 0

        app = create_app(is_ready=is_ready)
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            access_log=False,
            lifespan="on",
        )
        http = _Server(config, started=http_started)
        dimse.start()
        try:
            log.info(
                "pacs serving: DIMSE %s on port %d, HTTP on http://%s:%d (index: %s, data: %s)",
                settings.ae_title, dimse.port, settings.http_host, settings.http_port,
                services.index.describe(), settings.data_dir,
            )
            http.run()
        finally:
            log.info("shutting down: finishing in-flight stores")
            dimse.stop()
            services.blobs.sweep_tmp()  # partial receives of aborted associations
        if http.failed:
            log.error("the HTTP server could not start on %s:%d", settings.http_host,
                      settings.http_port)
            return 1
    log.info("stopped")
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it listens; SIGINT/SIGTERM end it gracefully."""

    def __init__(self, config: uvicorn.Config, *, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started
        self.failed = False

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.should_exit:
            self.failed = True
        else:
            self._started_event.set()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM begin a graceful shutdown; unlike uvicorn's own, the signal is not
        raised again afterwards: ``serve`` still has to stop DIMSE, then exits 0."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _EXIT_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(sig).name)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
