"""What the DICOMweb routes are given: the services they call and a few plain options.

Built by the composition root (``pacs.serve``); routes never read settings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from dicomweb.wado_services import WadoServices
from pacs.services.ingest import IngestService
from pacs.services.query import QueryService
from pacs.services.retrieve import RetrieveService
from pacs.services.routing import RoutingService
from pacs.services.workflow import WorkflowService, actor

BASE_PATH = "/dicom-web"
"""Where the DICOMweb resources live (PS3.18 base URL: ``http://HOST:PORT/dicom-web``)."""


def base_url(request: Request) -> str:
    """The absolute DICOMweb base URL as this client reached the server (for RetrieveURL).

    Built from the Host header; a Host that names this server's own address without a port
    (dicomweb-client sends ``Host: 127.0.0.1`` on POSTs) gets the port the request came in
    on, so the URLs work. A name (a proxy's Host) is trusted as it is."""
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and server[1] not in (80, 443) and url.hostname in (
        server[0], "localhost", "127.0.0.1", "::1"
    ):
        url = url.replace(port=server[1])
    return str(url).rstrip("/") + BASE_PATH


def client_actor(request: Request) -> str:
    """Who made an HTTP request, for the audit trail: ``http:ADDRESS``."""
    return actor("http", address=request.client.host if request.client else None)


@dataclass(frozen=True)
class WebOptions:
    """Plain values from ``Settings`` that shape HTTP behaviour."""

    fuzzy_person_names: bool = True
    max_request_bytes: int = 1024 * 1_000_000  # STOW-RS bodies above this answer 413
    cors_origins: tuple[str, ...] = ()  # DICOMweb CORS; empty: no CORS headers at all
    cors_methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Web:
    """The services behind the DICOMweb routes."""

    query: QueryService
    retrieve: RetrieveService
    ingest: IngestService
    options: WebOptions = field(default_factory=WebOptions)
    wado: WadoServices | None = None  # WADO-RS/URI; None: built from ``retrieve``, no disk cache
    workflow: WorkflowService | None = None  # the QA API under /api (None: not served)
    routing: RoutingService | None = None
