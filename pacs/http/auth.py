"""Who is asking, and whether they may: the principal of an HTTP request and the role each
route needs, declared in one place per route.

Every route states its access once, in its ``dependencies``: ``requires(Role.VIEWER)`` (or
``UPLOADER``, ``QA``, ``ADMIN``; :func:`pacs.services.auth.allows` says which role includes
which) or :data:`PUBLIC` (``/health``, the sign-in page: nothing about patients). A test walks
the application's route table and fails on a route that declares neither, or both.

- **Credentials**: ``Authorization: Bearer <token>`` (an API token or an OIDC access token,
  RFC 6750), checked by the services' :class:`~pacs.services.auth.Authenticator`; or the web
  UI's session cookie (:mod:`pacs.ui.sign_in`, :mod:`pacs.services.sessions`), which
  authenticates reading requests
  anywhere (a page, the thumbnails it shows) and state changes only on the UI's own forms,
  which carry a CSRF token. With ``--auth none`` every request is :data:`ANONYMOUS`, who may
  do everything, and the audit trail names its address only (``http:ADDRESS``).
- **Refusals**: no credential, or one that is refused: ``401`` with ``WWW-Authenticate:
  Bearer realm="pacs"`` (and ``error="invalid_token"`` when one was given, RFC 6750 3.1) and
  a JSON body that says which of the two, nothing more; a UI page redirects to the sign-in
  page instead. A principal without the role: ``403``. Both are audited as counted refusals
  (``auth-failed``: ``http:ADDRESS``, ``missing`` or ``invalid``, with the reason an OIDC
  token was refused, ``invalid: expired``, never the token; ``permission-denied``:
  ``http:token:NAME@ADDRESS``, the route and the role it needs), so a flood costs a counter.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol
from urllib.parse import quote

from fastapi import Depends, params
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection, Request

from pacs.http.errors import HttpError
from pacs.services.auth import CredentialRefused, Principal, Role
from pacs.services.workflow import actor

REALM = "pacs"
SESSION_COOKIE = "pacs_session"
"""The web UI's session cookie (its value is a random session id; the index keeps its hash)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

ANONYMOUS = Principal.of("anonymous", *Role, kind="anonymous")
"""Everyone, when authentication is off (``--auth none``): every role, no name."""


class SessionLookup(Protocol):
    """What a session cookie stands for (the web UI's sign-in keeps the sessions)."""

    def principal(self, session_id: str) -> Principal | None: ...


class Recorder(Protocol):
    """:meth:`pacs.services.audit.AuditTrail.record`: one audit row, written at once."""

    def __call__(self, *, who: str, action: str, outcome: str,
                 study_instance_uid: str | None = None,
                 detail: dict[str, Any] | None = None) -> None: ...


class Refusals(Protocol):
    """:meth:`pacs.services.audit.AuditTrail.refusal`: counted, never blocking."""

    def __call__(self, *, who: str, action: str, reason: str,
                 detail: dict[str, Any] | None = None) -> bool: ...


class Authenticating(Protocol):
    """:class:`pacs.services.auth.Authenticator`: a bearer credential to a principal."""

    def verify(self, bearer: str) -> Principal:
        """The principal; :class:`~pacs.services.auth.CredentialRefused` (with the reason
        for the audit trail, when there is one to tell) for a credential not accepted."""
        ...


@dataclass(frozen=True)
class Access:
    """How HTTP requests are authenticated, built by the composition root and kept in
    ``app.state.access``. ``authenticator`` None is ``--auth none``: every request is
    :data:`ANONYMOUS`."""

    authenticator: Authenticating | None = None
    sessions: SessionLookup | None = None
    refusals: Refusals | None = None
    record: Recorder | None = None
    verified: VerifiedTokens | None = field(default_factory=lambda: VerifiedTokens())
    sign_in_path: str = "/ui/sign-in"
    page_prefixes: tuple[str, ...] = ("/ui",)  # answered by a redirect to the sign-in page
    metrics_token: str | None = None  # --metrics-token: a bearer token for /metrics only

    @property
    def required(self) -> bool:
        return self.authenticator is not None


def access_of(connection: HTTPConnection) -> Access:
    access: Access = connection.app.state.access
    return access


def address_of(connection: HTTPConnection) -> str | None:
    return connection.client.host if connection.client else None


def _bearer(header: str) -> str | None:
    """The token of ``Bearer <token>`` (RFC 6750 2.1; the scheme is case-insensitive);
    None for another scheme."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


class VerifiedTokens:
    """Bearer tokens verified in the last ``ttl`` seconds, by their SHA-256: a busy client's
    token costs a dictionary look-up instead of an index read and a thread hand-off per
    request. Only accepted tokens are kept, at most ``max_entries`` (then it starts over);
    a token revoked or expired meanwhile keeps working on a server for at most ``ttl``
    seconds, after which every server asks the index again."""

    def __init__(self, ttl: float = 5.0, max_entries: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, token: str) -> Principal | None:
        key = self._key(token)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if self.clock() - found[0] >= self.ttl:
                del self._entries[key]
                return None
            return found[1]

    def put(self, token: str, principal: Principal) -> None:
        key = self._key(token)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (self.clock(), principal)


async def authenticate(request: Request) -> Principal | None:
    """The principal of the request (a dependency, so it is checked once per request), or
    None when it has no credential or one that is refused. Never raises: the route's
    :class:`Requires` decides what a missing principal means. The index is asked in a worker
    thread, and only when the answer is not at hand (authentication off, a token verified in
    the last seconds)."""
    access = access_of(request)
    if not access.required:
        return ANONYMOUS
    header = request.headers.get("authorization")
    if header is not None:
        token = _bearer(header)
        if not token or access.authenticator is None:
            return None
        known = access.verified.get(token) if access.verified is not None else None
        if known is not None:
            return known
        try:
            found = await run_in_threadpool(access.authenticator.verify, token)
        except CredentialRefused as refused:
            request.state.refused_because = refused.reason  # for the audit, never the token
            return None
        if access.verified is not None:
            access.verified.put(token, found)
        return found
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and access.sessions is not None and _cookie_counts(request, access):
        signed_in = await run_in_threadpool(access.sessions.principal, cookie)
        if signed_in is not None:
            request.state.session_id = cookie  # the UI checks its forms' CSRF token against it
        return signed_in
    return None


def session_of(request: Request) -> str | None:
    """The id of the session that authenticated the request (None: a bearer token, or
    authentication off)."""
    found: str | None = getattr(request.state, "session_id", None)
    return found


def _cookie_counts(request: Request, access: Access) -> bool:
    """A session cookie authenticates reading requests anywhere (a page, its thumbnails),
    and changes only on the UI's forms, whose CSRF token the UI checks."""
    return request.method in SAFE_METHODS or _under(request.url.path, access.page_prefixes)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def refused_because(request: Request) -> str | None:
    """Why the request's credential was refused, when the verifier told (an OIDC token:
    "expired", "wrong audience"; never an API token, whose refusal tells nothing of which
    tokens exist): a few words for the audit trail, never the credential."""
    because: str | None = getattr(request.state, "refused_because", None)
    return because


def credential_given(request: Request, access: Access) -> bool:
    """Whether the request carried a credential: a bearer token, or a session cookie where
    one counts."""
    return "authorization" in request.headers or (
        SESSION_COOKIE in request.cookies and _cookie_counts(request, access))


BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description=(
    "An API token (`pacs token create`) or, where OIDC is configured, an OIDC access token."))
"""Only for the OpenAPI document (its Authorize button, a lock on every protected route);
:func:`authenticate` reads the header itself."""


class Requires:
    """The dependency that declares, and enforces, the role a route needs."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __repr__(self) -> str:
        return f"Requires({self.role.value})"

    async def __call__(
        self, request: Request, found: Annotated[Principal | None, Depends(authenticate)],
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> Principal:
        access = access_of(request)
        address = address_of(request)
        if found is None:
            given = credential_given(request, access)
            if _under(request.url.path, access.page_prefixes):
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                raise HttpError(303, "sign in first", headers={
                    "Location": f"{access.sign_in_path}?next={quote(target, safe='')}"})
            kind = "invalid" if given else "missing"
            because = refused_because(request) if given else None
            _count(access, who=actor("http", address=address), action="auth-failed",
                   reason=f"{kind} credential" + (f": {because}" if because else ""),
                   detail={"reason": f"{kind}: {because}" if because else kind,
                           "method": request.method, "path": request.url.path[:200]})
            challenge = f'Bearer realm="{REALM}"'
            if given:
                challenge += ', error="invalid_token"'
            raise HttpError(
                401, "the credential is not valid" if given else "authentication required: "
                "send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": challenge})
        if not found.may(self.role):
            _count(access, who=actor("http", address=address, user=found.actor),
                   action="permission-denied", reason=f"needs {self.role.value}",
                   detail={"method": request.method, "path": request.url.path[:200],
                           "needed": self.role.value})
            raise HttpError(403, f"this needs the {self.role.value} role",
                            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", '
                                     'error="insufficient_scope"'})
        return found


SCRAPER = Principal.of("metrics", kind="scrape")
"""Who presented the scrape token (``--metrics-token``): no role, /metrics only."""


class RequiresOrScrapeToken(Requires):
    """``/metrics``: the role, like any route (a token or session with it; everyone under
    ``--auth none``), or the static scrape token, which no other route accepts. The token is
    compared by SHA-256 digest with :func:`hmac.compare_digest`: the time taken tells nothing
    of how much of it matched, nor of its length."""

    async def __call__(  # type: ignore[override]
        self, request: Request,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> Principal:
        access = access_of(request)
        header = request.headers.get("authorization")
        if access.metrics_token is not None and header is not None:
            token = _bearer(header)
            if token and hmac.compare_digest(_digest(token), _digest(access.metrics_token)):
                return SCRAPER
        return await super().__call__(request, await authenticate(request), _scheme)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _count(access: Access, **event: Any) -> None:
    if access.refusals is not None:
        access.refusals(**event)


def requires(role: Role) -> params.Depends:
    """``dependencies=[requires(Role.QA)]``: the route needs ``role``."""
    return params.Depends(Requires(role))


async def public() -> None:
    """A route anyone may call: it tells nothing about patients (``/health``, sign-in)."""


PUBLIC = params.Depends(public)
"""``dependencies=[PUBLIC]``: a route that needs no principal, declared as such."""


async def principal_of(found: Annotated[Principal | None, Depends(authenticate)]
                       ) -> Principal:
    """The principal, for a route that declared its role (its :class:`Requires` ran first
    and refused a request without one)."""
    if found is None:
        raise HttpError(401, "authentication required",
                        headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    return found


PrincipalDep = Annotated[Principal, Depends(principal_of)]


async def actor_of(request: Request,
                   found: Annotated[Principal | None, Depends(authenticate)]) -> str:
    """Who made the request, for the audit trail: ``http:token:NAME@ADDRESS`` (an API
    token), ``http:oidc:SUBJECT@ADDRESS``, or ``http:ADDRESS`` without authentication."""
    user = None if found is None or found is ANONYMOUS else found.actor
    return actor("http", address=address_of(request), user=user)


Who = Annotated[str, Depends(actor_of)]
"""The actor of the request, as a route parameter (``who: Who``)."""


def declared_access(dependencies: list[Any]) -> list[Role | None]:
    """The access a route's dependencies declare: a role for each :class:`Requires`, None
    for :data:`PUBLIC` (what the route-table test reads)."""
    found: list[Role | None] = []
    for dependency in dependencies:
        call: Callable[..., Any] | None = getattr(dependency, "call", None)
        if isinstance(call, Requires):
            found.append(call.role)
        elif call is public:
            found.append(None)
    return found
