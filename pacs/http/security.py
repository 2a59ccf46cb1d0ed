"""What the HTTP front end refuses a browser, the headers that keep its pages to themselves,
and the audit of refused requests.

- :class:`CrossSiteGuard`: a state-changing request (``POST``, ``PUT``, ``PATCH``, ``DELETE``)
  that a browser sent from another site's page answers 403 before any route runs. Any page
  can *send* a form post or a ``no-cors`` fetch without asking (a CORS "simple request",
  Fetch Standard 3.2.3): CORS only keeps the answer from it, the change would be done. The
  rule is the one of Go's ``net/http.CrossOriginProtection``: ``Sec-Fetch-Site`` (Fetch
  Metadata, set by the browser, never by a page) ``same-origin`` or ``none`` passes, any
  other value is refused; without it, an ``Origin`` header (RFC 6454 7) must name this
  server (the ``Host`` the request came to); with neither, the client is not a browser
  (storescu-like tools, dicomweb-client, curl) and passes. Origins configured for CORS
  (``--cors-origins``) pass on DICOMweb (a viewer's STOW-RS and reject), never on ``/api``
  or ``/ui``, which have no CORS and are used from their own pages only.
- :class:`DicomWebCors`: CORS headers on DICOMweb (``/dicom-web``, ``/wado``) for the
  configured origins only; nothing else ever answers CORS.
- :class:`SecurityHeaders`: every answer says ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY`` and ``Referrer-Policy: same-origin`` (no other site learns a
  page's URL; ``no-referrer`` would also make a browser send ``Origin: null`` with the UI's
  own form posts where it sends no Fetch Metadata, plain HTTP to a host name, and
  :class:`CrossSiteGuard` would refuse them all); HTML pages also carry a
  ``Content-Security-Policy`` with no inline script and ``frame-ancestors 'none'``; under HTTPS
  (``--tls-cert``) every answer carries ``Strict-Transport-Security`` (RFC 6797). It also
  tells the audit of 413 answers (STOW-RS bodies over the limit).
- :class:`BodyLimit`: a request body other than STOW-RS's (the JSON of ``/api``, the UI's
  forms, a reject) is small: one over ``MAX_SMALL_BODY`` answers 413 before it is read whole
  (by its ``Content-Length``, or as soon as a chunked body passes the limit). STOW-RS bodies
  are bounded by ``--max-request-mb`` in :mod:`dicomweb.stow`.
- :class:`RefusalAudit`: refused requests (403, 413, and 408 / 431 / 503 from
  :mod:`pacs.http.server`) as ``http-refused`` audit events, counted per client address and
  outcome by the service's audit writer, which writes one row of each kind per flush.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.services.workflow import actor

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods that change nothing (RFC 9110 9.2.1); every other one is guarded."""

CORS_PATHS = ("/dicom-web", "/wado")
"""Where CORS may apply: DICOMweb (PS3.18) and WADO-URI, which viewers on other origins read."""

PAGE_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""The UI's Content-Security-Policy: scripts, styles and images from this server only (no
inline script or style, no ``eval``), forms post here only, no page may frame it."""

DOCS_POLICY = "frame-ancestors 'none'"
"""FastAPI's ``/docs`` and ``/redoc`` load their scripts from a CDN with inline start-up code."""

MAX_SMALL_BODY = 1 << 20
"""Bytes of a request body outside STOW-RS: a correction, a reason, a form fit in far less."""

_STOW = re.compile(r"^/dicom-web/studies(/[^/]+)?/?$")  # POST here is STOW-RS (PS3.18 10.5)

_DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
_LONGEST = 200  # characters of a path or origin kept in an audit row

_ALWAYS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
)
HSTS = ("strict-transport-security", "max-age=31536000")
"""Under HTTPS only (RFC 6797 7.2: a browser ignores it over plain HTTP): for a year, the
browser goes to this host over HTTPS only, even from an ``http://`` link, and gives no way
past a certificate error."""


def under(path: str, prefixes: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or below one."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


@dataclass(frozen=True)
class Refusal:
    """A request the server refused: what the audit row says."""

    status: int
    reason: str
    client: str | None
    method: str | None = None
    path: str | None = None
    origin: str | None = None


class RefusalAudit:
    """Refused requests as ``http-refused`` audit events. ``count`` is the service's
    ``AuditTrail.refusal``: it counts them per client and outcome and its background writer
    makes one row of each kind (with the ``count`` and the first one's method, path and
    origin), so a flood never blocks or fails an answer, nor writes a row per request."""

    def __init__(self, count: Callable[..., bool]) -> None:
        self._count = count

    def refused(self, refusal: Refusal) -> None:
        """Count ``refusal``; from any thread, never blocks."""
        detail = {"client": refusal.client, **{
            name: value[:_LONGEST] for name, value in (
                ("method", refusal.method), ("path", refusal.path), ("origin", refusal.origin))
            if value is not None}}
        self._count(who=actor("http", address=refusal.client), action="http-refused",
                    reason=f"{refusal.status} {refusal.reason}", detail=detail)

    def refused_connection(self, status: int, reason: str, *, client: str | None) -> None:
        """The listener's hook (:class:`pacs.http.server.RefusalHook`)."""
        self.refused(Refusal(status, reason, client))


class _TooLarge(HTTPException):
    """A body passed the limit while the application read it: an HTTPException, so FastAPI's
    body parsing passes it on as it is (it turns other errors into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (only STOW-RS takes large "
                         "bodies)")


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, except STOW-RS's (see the module
    docstring); the application never holds more than ``limit`` bytes of it."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_SMALL_BODY,
                 audit: RefusalAudit | None = None) -> None:
        self.app = app
        self.limit = limit
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] in SAFE_METHODS
                or (scope["method"] == "POST" and _STOW.match(scope["path"]))):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if started:  # an answer is under way already: it can only be cut short
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # SecurityHeaders, further out, tells the audit of the 413
        refused = JSONResponse({"error": _TooLarge(self.limit).detail}, status_code=413,
                               headers={"Connection": "close"})
        await refused(scope, receive, send)


class CrossSiteGuard:
    """ASGI middleware: 403 for a state-changing request a browser sent from another site
    (the rule is in the module docstring); nothing behind it runs."""

    def __init__(self, app: ASGIApp, *, cors_origins: Iterable[str] = (),
                 audit: RefusalAudit | None = None) -> None:
        self.app = app
        self.trusted = frozenset(origin for origin in cors_origins if origin != "*")
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        reason = self.refusal(scope["path"], headers)
        if reason is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        origin = headers.get("origin")
        if self.audit is not None:
            self.audit.refused(Refusal(403, "cross-site", client[0] if client else None,
                                       scope["method"], scope["path"], origin))
        refused = JSONResponse({"error": f"cross-site request refused: {reason}"},
                               status_code=403, headers={"Connection": "close"})
        await refused(scope, receive, send)

    def refusal(self, path: str, headers: Headers) -> str | None:
        """Why a state-changing request to ``path`` is refused, or None when it may go on."""
        origin = headers.get("origin")
        if origin is not None and origin in self.trusted and under(path, CORS_PATHS):
            return None
        site = headers.get("sec-fetch-site")
        if site is not None:
            if site in ("same-origin", "none"):
                return None
            return f"the browser marked it {site}"
        if origin is None or _same_origin(origin, headers.get("host", "")):
            return None
        return "its Origin is not this server"


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the authority in ``host``, default
    ports (80, 443) written or not."""
    scheme, separator, authority = origin.lower().partition("://")
    if not separator or scheme not in ("http", "https"):
        return False
    default = ":443" if scheme == "https" else ":80"
    return authority.removesuffix(default) == host.lower().removesuffix(default)


class DicomWebCors:
    """ASGI middleware: Starlette's CORS on DICOMweb paths, for the configured origins only;
    other paths (``/api``, ``/ui``, ``/health``) never answer CORS."""

    def __init__(self, app: ASGIApp, *, origins: Iterable[str],
                 methods: Iterable[str]) -> None:
        self.app = app
        allowed = list(origins)
        self.cors: ASGIApp = app if not allowed else CORSMiddleware(
            app, allow_origins=allowed, allow_methods=list(methods), allow_headers=["*"],
            expose_headers=["Warning", "ETag", "Content-Location", "Content-Length",
                            "Location"],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and under(scope["path"], CORS_PATHS):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: the headers of the module docstring on every answer, and a 413
    told to the audit."""

    def __init__(self, app: ASGIApp, *, audit: RefusalAudit | None = None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ALWAYS:
                    headers.setdefault(name, value)
                if scope.get("scheme") == "https":
                    headers.setdefault(*HSTS)
                if headers.get("content-type", "").startswith("text/html"):
                    policy = DOCS_POLICY if scope["path"] in _DOCS_PATHS else PAGE_POLICY
                    headers.setdefault("content-security-policy", policy)
                if message["status"] == 413 and self.audit is not None:
                    client = scope.get("client")
                    self.audit.refused(Refusal(
                        413, "request body too large", client[0] if client else None,
                        scope["method"], scope["path"], Headers(scope=scope).get("origin")))
            await send(message)

        await self.app(scope, receive, send_with_headers)
