"""Signing in to the web UI, and out (with ``--auth required``; with ``--auth none`` these
pages send the browser on to the studies).

``GET /ui/sign-in`` shows a form for a credential the server's authenticator accepts: an API
token (``pacs token create``) or, where OIDC is configured, an OIDC access token pasted in.
``POST /ui/sign-in`` checks it (a refusal is audited as ``auth-failed`` with the verifier's
reason, an OIDC identity with no pacs role is refused with 403) and opens a session
(:mod:`pacs.services.sessions`, ending no later than an OIDC token's ``exp``): the
cookie ``pacs_session`` carries its random id, ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it), ``Secure`` under HTTPS, ``Path=/`` (the
study page's thumbnails come from DICOMweb), and no ``Max-Age`` (it ends with the browser;
the server ends it sooner: :mod:`pacs.services.sessions`). ``POST /ui/sign-out`` deletes the
session. Both forms carry a CSRF token: the sign-in form one matched against a short-lived
cookie of its own (before there is a session), the sign-out form the session's.

Where a client id is configured (``--oidc-client-id``), the page also offers "Sign in with
<issuer>": the authorization-code flow with PKCE (:mod:`pacs.services.oidc_sign_in`).
``GET /ui/sign-in/oidc`` (a link, not a form: the page's ``form-action 'self'`` would stop a
form's redirect to the identity provider) starts it and redirects there, with the PKCE
verifier in the cookie ``pacs_oidc`` (``HttpOnly``, ``Path=/ui/sign-in/callback``, for the
few minutes a sign-in may take, and ``SameSite=Lax``: the identity provider sends the
browser back with a top-level navigation from its own site, which carries Lax cookies and
not Strict ones). ``GET /ui/sign-in/callback`` finishes it and opens the session as above.
The Strict session cookie set by an answer to that cross-site navigation would not be sent
by a redirect still in its chain, so the callback answers with a page that goes on to the
UI by itself (a ``meta`` refresh, a navigation of this site's own).
"""

from __future__ import annotations

import hmac
import secrets
from functools import partial
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from pacs.http.auth import PUBLIC, SESSION_COOKIE, access_of, address_of, authenticate
from pacs.http.context import WebDep
from pacs.http.urls import root_url
from pacs.services.auth import CredentialRefused, Principal
from pacs.services.errors import SignInRefused
from pacs.services.workflow import actor
from pacs.ui.pages import csrf_refusal, local_path, templates

if TYPE_CHECKING:  # PyJWT is imported only where OIDC is configured
    from pacs.services.oidc_sign_in import OidcSignIn

SIGN_IN_PATH = "/ui/sign-in"
OIDC_START_PATH = "/ui/sign-in/oidc"
CALLBACK_PATH = "/ui/sign-in/callback"
PKCE_COOKIE = "pacs_oidc"  # the PKCE code verifier of the sign-in under way
SIGN_IN_COOKIE = "pacs_sign_in"  # the sign-in form's CSRF token, until a session exists
SIGN_IN_FORM_SECONDS = 3600
HOME = "/ui/studies"
MAX_CREDENTIAL = 8192  # characters: an OIDC access token is a JWT of a few kB at most

router = APIRouter(include_in_schema=False)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _form(request: Request, next_path: str, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    flow = _oidc_sign_in(request)
    page = templates().TemplateResponse(
        request, "sign_in.html",
        {"next": next_path, "csrf": token, "error": error, "flash": "", "principal": None,
         "may": lambda _role: False,  # no menu before signing in
         "oidc": getattr(access_of(request).authenticator, "oidc", None) is not None,
         "provider": flow.provider if flow is not None else None,
         "oidc_start": f"{OIDC_START_PATH}?{urlencode({'next': next_path})}"},
        status_code=status,
        headers={"WWW-Authenticate": 'Bearer realm="pacs"'} if status == 401 else None,
    )
    page.set_cookie(SIGN_IN_COOKIE, token, max_age=SIGN_IN_FORM_SECONDS, path=SIGN_IN_PATH,
                    httponly=True, samesite="strict", secure=_secure(request))
    return page


def _oidc_sign_in(request: Request) -> OidcSignIn | None:
    """The sign-in at the identity provider, where configured (what ``web: WebDep`` holds)."""
    flow: OidcSignIn | None = request.app.state.web.oidc_sign_in
    return flow


@router.get(SIGN_IN_PATH, dependencies=[PUBLIC])
def sign_in_page(request: Request, next: str = "") -> Response:  # noqa: A002 - the form's
    if not access_of(request).required:
        return RedirectResponse(local_path(next) or HOME, status_code=303)
    return _form(request, local_path(next) or HOME)


@router.post(SIGN_IN_PATH, dependencies=[PUBLIC])
async def sign_in(
    request: Request, web: WebDep,
    token: Annotated[str, Form(max_length=MAX_CREDENTIAL)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",  # noqa: A002
) -> Response:
    access = access_of(request)
    target = local_path(next) or HOME
    if not access.required or access.authenticator is None or web.sessions is None:
        return RedirectResponse(target, status_code=303)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not (expected and csrf.isascii() and hmac.compare_digest(expected, csrf)):
        return _form(request, target, "The sign-in form was out of date: please sign in "
                     "again.", status=403)
    authenticator, sessions = access.authenticator, web.sessions
    credential = token.strip()
    address = address_of(request)
    try:
        if not credential:
            raise CredentialRefused()
        principal = await run_in_threadpool(authenticator.verify, credential)
    except CredentialRefused as refused:
        kind = "invalid" if credential else "missing"
        because = refused.reason if credential else None
        if access.refusals is not None:
            access.refusals(who=actor("http", address=address), action="auth-failed",
                            reason=f"{kind} credential" + (f": {because}" if because else ""),
                            detail={"reason": f"{kind}: {because}" if because else kind,
                                    "method": "POST", "path": SIGN_IN_PATH})
        return _form(request, target, "That token is not valid (unknown, revoked or "
                     "expired)." if credential else "Paste a token to sign in.", status=401)
    if not principal.roles:  # an OIDC identity without a pacs role: nothing to sign in to
        if access.refusals is not None:
            access.refusals(who=actor("http", address=address, user=principal.actor),
                            action="permission-denied", reason="no role",
                            detail={"method": "POST", "path": SIGN_IN_PATH, "needed": "a role"})
        return _form(request, target, "You are known, but have no role here (viewer, "
                     "uploader, qa or admin): ask an administrator.", status=403)
    session = await run_in_threadpool(sessions.open, principal, expires_at=principal.expires_at)
    await run_in_threadpool(_record, request, principal, "sign-in", "signed in")
    answer = RedirectResponse(target, status_code=303)
    answer.set_cookie(SESSION_COOKIE, session.id, path="/", httponly=True, samesite="strict",
                      secure=_secure(request))
    answer.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN_PATH)
    return answer


@router.get(OIDC_START_PATH, dependencies=[PUBLIC])
async def oidc_start(request: Request, web: WebDep,
                     next: str = "") -> Response:  # noqa: A002 - the page's
    """Start signing in at the identity provider: a pending sign-in in the index, the PKCE
    verifier in a cookie, and a redirect to the authorization endpoint."""
    target = local_path(next[:2000]) or HOME
    flow = web.oidc_sign_in
    if not access_of(request).required or web.sessions is None:
        return RedirectResponse(target, status_code=303)
    if flow is None:
        return _form(request, target, "Signing in at an identity provider is not "
                     "configured on this server: use a token.", status=404)
    try:
        started = await run_in_threadpool(partial(
            flow.start, callback_url=root_url(request) + CALLBACK_PATH, next_path=target))
    except SignInRefused as refused:
        return _form(request, target, str(refused), status=503)
    answer = RedirectResponse(started.url, status_code=303,
                              headers={"Cache-Control": "no-store"})
    answer.set_cookie(PKCE_COOKIE, started.verifier, max_age=started.max_age,
                      path=CALLBACK_PATH, httponly=True, samesite="lax",
                      secure=_secure(request))
    return answer


@router.get(CALLBACK_PATH, dependencies=[PUBLIC])
async def oidc_callback(request: Request, web: WebDep, state: str = "", code: str = "",
                        error: str = "") -> Response:
    """The identity provider's redirect back (RFC 6749 4.1.2): check it, exchange the code,
    and open a session for the access token's principal."""
    access = access_of(request)
    flow, sessions = web.oidc_sign_in, web.sessions
    if not access.required or flow is None or sessions is None:
        return RedirectResponse(HOME, status_code=303)
    verifier = request.cookies.get(PKCE_COOKIE, "")
    try:
        signed = await run_in_threadpool(partial(
            flow.finish, state=state, code=code, verifier=verifier, error=error))
    except SignInRefused as refused:
        if access.refusals is not None:
            access.refusals(who=actor("http", address=address_of(request)),
                            action="auth-failed", reason=f"OIDC sign-in: {refused.reason}",
                            detail={"reason": refused.reason, "method": "GET",
                                    "path": CALLBACK_PATH})
        answer = _form(request, refused.next_path or HOME, str(refused), status=401)
        answer.delete_cookie(PKCE_COOKIE, path=CALLBACK_PATH, httponly=True, samesite="lax",
                             secure=_secure(request))
        return answer
    principal, address = signed.principal, address_of(request)
    if not principal.roles:  # as with a pasted token: an identity with no pacs role
        if access.refusals is not None:
            access.refusals(who=actor("http", address=address, user=principal.actor),
                            action="permission-denied", reason="no role",
                            detail={"method": "GET", "path": CALLBACK_PATH,
                                    "needed": "a role"})
        answer = _form(request, signed.next_path, "You are known, but have no role here "
                       "(viewer, uploader, qa or admin): ask an administrator.", status=403)
        answer.delete_cookie(PKCE_COOKIE, path=CALLBACK_PATH, httponly=True, samesite="lax",
                             secure=_secure(request))
        return answer
    session = await run_in_threadpool(sessions.open, principal,
                                      expires_at=getattr(principal, "expires_at", None))
    await run_in_threadpool(_record, request, principal, "sign-in", "signed in")
    answer = templates().TemplateResponse(
        request, "signed_in.html",
        {"next": signed.next_path, "principal": None, "may": lambda _role: False,
         "flash": "", "error": ""},
        headers={"Cache-Control": "no-store"})
    answer.set_cookie(SESSION_COOKIE, session.id, path="/", httponly=True, samesite="strict",
                      secure=_secure(request))
    answer.delete_cookie(PKCE_COOKIE, path=CALLBACK_PATH, httponly=True, samesite="lax",
                         secure=_secure(request))
    return answer


@router.post("/ui/sign-out", dependencies=[PUBLIC])
async def sign_out(request: Request, web: WebDep) -> Response:
    principal = await authenticate(request)  # the session's, if the cookie is still good
    form = {key: value for key, value in (await request.form()).items()
            if isinstance(value, str)}
    refused = csrf_refusal(request, form)
    if refused is not None:
        return refused
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id and web.sessions is not None:
        if await run_in_threadpool(web.sessions.close, session_id) and principal is not None:
            await run_in_threadpool(_record, request, principal, "sign-out", "signed out")
    answer = RedirectResponse(SIGN_IN_PATH if access_of(request).required else HOME,
                              status_code=303)
    answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                         secure=_secure(request))
    return answer


def _record(request: Request, principal: Principal, action: str, outcome: str) -> None:
    access = access_of(request)
    if access.record is not None:
        access.record(who=actor("http", address=address_of(request), user=principal.actor),
                      action=action, outcome=outcome)

