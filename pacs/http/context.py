"""What the HTTP routes are given: the services they call and a few plain options.

Built by the composition root (``pacs.serve``) and kept in ``app.state`` by
:func:`pacs.web.create_app`; a route asks for them with a dependency (``web: WebDep``) and
never builds or configures a service itself, nor reads settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from pacs.services.ae_registry import AeRegistry
from pacs.services.auth import TokenService
from pacs.services.changes import ChangeService
from pacs.services.commitment import CommitmentService
from pacs.services.ingest import IngestService
from pacs.services.mpps import MppsService
from pacs.services.orders import OrderService
from pacs.services.query import QueryService
from pacs.services.retrieve import RetrieveService
from pacs.services.routing import RoutingService
from pacs.services.sessions import SessionService
from pacs.services.workflow import WorkflowService

if TYPE_CHECKING:  # PyJWT is imported only where OIDC is configured
    from pacs.services.oidc_sign_in import OidcSignIn

DICOMWEB_PATH = "/dicom-web"
"""Where the DICOMweb resources live (PS3.18 base URL: ``http://HOST:PORT/dicom-web``)."""


@dataclass(frozen=True)
class WebOptions:
    """Plain values from ``Settings`` that shape HTTP behaviour."""

    fuzzy_person_names: bool = True
    max_request_bytes: int = 1024 * 1_000_000  # STOW-RS bodies above this answer 413
    cors_origins: tuple[str, ...] = ()  # DICOMweb CORS; empty: no CORS headers at all
    cors_methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Web:
    """The services behind the HTTP routes."""

    query: QueryService
    retrieve: RetrieveService
    ingest: IngestService
    workflow: WorkflowService
    routing: RoutingService
    tokens: TokenService  # the admin routes: API tokens
    ae_registry: AeRegistry  # the admin routes: the AE registry
    options: WebOptions = field(default_factory=WebOptions)
    sessions: SessionService | None = None  # the web UI's sign-in (None: no sign-in)
    oidc_sign_in: OidcSignIn | None = None  # signing in at the identity provider (PKCE)
    orders: OrderService | None = None  # imaging orders (None: the orders routes answer 503)
    mpps: MppsService | None = None  # a study's MPPS (None: not served)
    commitment: CommitmentService | None = None  # a study's storage commitments
    changes: ChangeService | None = None  # the change feed (None: not offered)


async def web_of(request: HTTPConnection) -> Web:
    """The dependency every route that calls a service takes (``web: WebDep``)."""
    web: Web = request.app.state.web
    return web


WebDep = Annotated[Web, Depends(web_of)]
