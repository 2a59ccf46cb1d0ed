"""Signing in to the web UI, and out (with ``--auth required``; with ``--auth none`` both
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

The authorization-code flow with PKCE (signing in at the identity provider) is not built:
the OIDC settings it needs (issuer, client id) are not part of this server yet.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from pacs.http.auth import PUBLIC, SESSION_COOKIE, access_of, address_of, authenticate
from pacs.http.context import WebDep
from pacs.services.auth import CredentialRefused, Principal
from pacs.services.workflow import actor
from pacs.ui.pages import csrf_refusal, local_path, templates

SIGN_IN_PATH = "/ui/sign-in"
SIGN_IN_COOKIE = "pacs_sign_in"  # the sign-in form's CSRF token, until a session exists
SIGN_IN_FORM_SECONDS = 3600
HOME = "/ui/studies"
MAX_CREDENTIAL = 8192  # characters: an OIDC access token is a JWT of a few kB at most

router = APIRouter(include_in_schema=False)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _form(request: Request, next_path: str, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    page = templates().TemplateResponse(
        request, "sign_in.html",
        {"next": next_path, "csrf": token, "error": error, "flash": "", "principal": None,
         "may": lambda _role: False,  # no menu before signing in
         "oidc": getattr(access_of(request).authenticator, "oidc", None) is not None},
        status_code=status,
        headers={"WWW-Authenticate": 'Bearer realm="pacs"'} if status == 401 else None,
    )
    page.set_cookie(SIGN_IN_COOKIE, token, max_age=SIGN_IN_FORM_SECONDS, path=SIGN_IN_PATH,
                    httponly=True, samesite="strict", secure=_secure(request))
    return page


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

