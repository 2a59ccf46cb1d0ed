"""Signing in to the web UI at the OpenID Connect identity provider: the authorization-code
flow (OIDC Core 3.1) with PKCE (RFC 7636, method ``S256``).

:meth:`OidcSignIn.start` finds the issuer's endpoints (OIDC Discovery, cached), makes a
random ``state`` (the callback's key), a ``nonce`` (for the ID token) and a PKCE code
verifier, keeps a pending sign-in in the index for :data:`PENDING` (the hash of the state,
the nonce, the verifier's S256 challenge, the redirect URI, the page to go on to; at most
:data:`MAX_PENDING` at once, since anyone may start one) and gives
back the authorization request's URL and the verifier. The front end puts the verifier in a
short-lived cookie: it binds the sign-in to the browser that started it, and it is nowhere
else (the index holds only its challenge, as the identity provider does).

:meth:`OidcSignIn.finish` takes the callback's ``state``, ``code`` (or ``error``) and the
cookie's verifier. The pending sign-in is deleted as it is read (one use, on any server of
the site); the verifier must answer its challenge; the code is exchanged at the token
endpoint (with the verifier, RFC 7636 4.5); the access token must be one the bearer-token
verifier accepts (:class:`~pacs.services.oidc.OidcVerifier`: signature, ``iss``, ``aud``,
``exp``, roles) and an ID token, when one comes with it, must be signed by the same keys,
for this client (``aud``, ``azp``) and carry the nonce. The result is the access token's
principal; the front end opens a session for it as for a pasted token.

Every refusal is a :class:`SignInRefused`: a sentence for the browser (no token, no URL, no
detail of the identity provider's answer) and a ``reason`` of a few words for the audit
trail. Neither tokens nor codes are logged or stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacs.services.auth import Principal
from pacs.services.errors import SignInRefused
from pacs.services.oidc import (
    FETCH_TIMEOUT,
    MAX_KEY_AGE,
    REFRESH_INTERVAL,
    KeySetError,
    OidcError,
    OidcVerifier,
    TokenRequestError,
    check_url,
    discover,
    post_form,
)
from storage.index import Index, PendingSignIn

log = logging.getLogger(__name__)

PENDING = dt.timedelta(minutes=10)  # time to sign in at the identity provider and come back
MAX_PENDING = 10_000  # sign-ins under way at once: anyone may start one, none may fill the index
SCOPE = "openid"
CHALLENGE_METHOD = "S256"
MAX_STATE = 100  # characters of a callback's state; ours have 43
MAX_CODE = 2048  # characters of an authorization code (Keycloak's are about 100)
MAX_ERROR = 40  # characters of an error code shown back (RFC 6749 4.1.2.1: a few words)
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def code_verifier() -> str:
    """A PKCE code verifier (RFC 7636 4.1): 64 characters of ``[A-Za-z0-9_-]`` from 48
    random bytes (the RFC asks for 43 to 128 characters, 256 bits of entropy or more)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str) -> str:
    """The S256 challenge of a verifier (RFC 7636 4.2): BASE64URL(SHA256(ASCII(verifier)))."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _is_verifier(value: str) -> bool:
    return 43 <= len(value) <= 128 and set(value) <= _UNRESERVED


def _hash(state: str) -> str:
    return hashlib.sha256(state.encode("ascii")).hexdigest()


_UNAVAILABLE = "The identity provider cannot be reached just now: try again later."
_START_AGAIN = "This sign-in is unknown, was used already or took too long: sign in again."
_OTHER_BROWSER = ("This sign-in was started in another browser or window, or its cookie was "
                  "lost: sign in again from this page.")
_NOT_COMPLETED = "The identity provider did not complete the sign-in: sign in again."
_TOO_MANY = "Too many sign-ins are under way: try again in a few minutes."
_NOT_ACCEPTED = ("The identity provider's answer is not accepted by this server: ask its "
                 "administrator (the audit trail says why).")


@dataclass(frozen=True)
class Endpoints:
    """Where the browser signs in, and where the server exchanges the code."""

    authorization: str
    token: str


def endpoints_of(metadata: dict[str, Any]) -> Endpoints:
    """The endpoints of the issuer's metadata (OIDC Discovery 3), which must allow the
    authorization-code flow with S256 when they say what they allow."""
    authorization = metadata.get("authorization_endpoint")
    token = metadata.get("token_endpoint")
    if not isinstance(authorization, str) or not isinstance(token, str):
        raise KeySetError("the discovery document has no authorization_endpoint or "
                          "token_endpoint")
    check_url(authorization)
    check_url(token)
    if "#" in authorization:  # RFC 6749 3.1: no fragment
        raise KeySetError("the authorization_endpoint has a fragment")
    methods = metadata.get("code_challenge_methods_supported")
    if isinstance(methods, list) and CHALLENGE_METHOD not in methods:
        raise KeySetError("the issuer does not support PKCE with S256")
    response_types = metadata.get("response_types_supported")
    if isinstance(response_types, list) and "code" not in response_types:
        raise KeySetError("the issuer does not support the authorization-code flow")
    return Endpoints(authorization=authorization, token=token)


class ProviderEndpoints:
    """The issuer's endpoints from its discovery document (with the same bounds as the key
    discovery: HTTPS or loopback HTTP, a timeout, a size limit, the issuer named in it),
    fetched at the first sign-in and kept for ``max_age``. A failed fetch is not tried again
    for ``refresh_interval``: sign-ins meanwhile fail at once, not after a timeout each."""

    def __init__(self, issuer: str, *, timeout: float = FETCH_TIMEOUT,
                 refresh_interval: float = REFRESH_INTERVAL, max_age: float = MAX_KEY_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_url(issuer)
        self.issuer = issuer
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._found: Endpoints | None = None
        self._fetched_at = 0.0
        self._failed_at: float | None = None

    def get(self) -> Endpoints:
        """The endpoints; :class:`KeySetError` when they cannot be had."""
        with self._lock:
            now = self.clock()
            if self._found is not None and now - self._fetched_at < self.max_age:
                return self._found
            if self._failed_at is not None and now - self._failed_at < self.refresh_interval:
                if self._found is not None:
                    return self._found  # old, but the issuer cannot tell us better now
                raise KeySetError("the last discovery failed moments ago")
            try:
                found = endpoints_of(discover(self.issuer, timeout=self.timeout))
            except KeySetError as error:
                self._failed_at = now
                log.warning("OIDC sign-in: cannot discover the endpoints of %s: %s",
                            self.issuer, error)
                if self._found is not None:
                    return self._found
                raise
            self._found, self._fetched_at, self._failed_at = found, now, None
            return found


@dataclass(frozen=True)
class Authorization:
    """A sign-in started: where to send the browser (the authorization request), the PKCE
    verifier for its cookie, and how long the sign-in may take (seconds)."""

    url: str
    verifier: str
    max_age: int


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    next_path: str


class OidcSignIn:
    """The authorization-code flow with PKCE for one client of one issuer (see the module
    docstring). ``access`` verifies access tokens (the bearer-token verifier); ID tokens are
    verified with its keys, for ``client_id``. ``client_secret`` makes it a confidential
    client (``client_secret_basic``, RFC 6749 2.3.1); ``redirect_uri``, when given, is used
    instead of the callback URL the front end derives from the request."""

    def __init__(self, *, index: Index, issuer: str, client_id: str, access: OidcVerifier,
                 client_secret: str | None = None, redirect_uri: str | None = None,
                 endpoints: ProviderEndpoints | None = None, pending: dt.timedelta = PENDING,
                 max_pending: int = MAX_PENDING, timeout: float = FETCH_TIMEOUT,
                 clock: Callable[[], dt.datetime] = _now) -> None:
        self.index = index
        self.issuer = issuer
        self.client_id = client_id
        self.access = access
        self.id_tokens = OidcVerifier(issuer=issuer, audience=client_id, keys=access.keys,
                                      role_claim=access.role_claim, leeway=access.leeway)
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.endpoints = endpoints or ProviderEndpoints(issuer, timeout=timeout)
        self.pending = pending
        self.max_pending = max_pending
        self.timeout = timeout
        self.clock = clock

    @property
    def provider(self) -> str:
        """The issuer as the sign-in page names it (host and path)."""
        parts = urllib.parse.urlsplit(self.issuer)
        return (parts.netloc + parts.path).rstrip("/")

    def start(self, *, callback_url: str, next_path: str) -> Authorization:
        """Begin a sign-in for the browser that asked; ``callback_url`` is this server's
        callback as the browser reached it (used unless a redirect URI is configured)."""
        try:
            endpoints = self.endpoints.get()
        except KeySetError:
            raise SignInRefused(_UNAVAILABLE, "identity provider unavailable",
                                next_path) from None
        state, nonce, verifier = (secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                  code_verifier())
        redirect_uri = self.redirect_uri or callback_url
        challenge = code_challenge(verifier)
        now = self.clock()
        with self.index.unit_of_work(write=True) as repository:
            repository.sign_ins.remove_ended(now)
            if repository.sign_ins.count() >= self.max_pending:
                raise SignInRefused(_TOO_MANY, "too many sign-ins under way", next_path)
            repository.sign_ins.add(
                state_sha256=_hash(state), created_at=now, expires_at=now + self.pending,
                pending=PendingSignIn(nonce=nonce, code_challenge=challenge,
                                      redirect_uri=redirect_uri, next_path=next_path))
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id,
            "redirect_uri": redirect_uri, "scope": SCOPE, "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": CHALLENGE_METHOD,
        })
        separator = "&" if urllib.parse.urlsplit(endpoints.authorization).query else "?"
        return Authorization(url=f"{endpoints.authorization}{separator}{query}",
                             verifier=verifier, max_age=int(self.pending.total_seconds()))

    def finish(self, *, state: str, code: str, verifier: str, error: str = "") -> SignedIn:
        """The principal of a sign-in come back from the identity provider (the callback's
        parameters and the cookie's verifier); :class:`SignInRefused` otherwise."""
        pending = None
        if state and len(state) <= MAX_STATE and state.isascii():
            with self.index.unit_of_work(write=True) as repository:
                pending = repository.sign_ins.take(_hash(state), self.clock())
        next_path = pending.next_path if pending is not None else None
        if error:  # RFC 6749 4.1.2.1: the user declined, or the provider refused
            shown = error if error.isascii() and len(error) <= MAX_ERROR and error.replace(
                "_", "").isalpha() else "error"
            raise SignInRefused(f"The identity provider did not sign you in ({shown}).",
                                f"identity provider answered {shown}", next_path)
        if pending is None:
            raise SignInRefused(_START_AGAIN, "unknown, used or expired state")
        if not (verifier and _is_verifier(verifier) and hmac.compare_digest(
                code_challenge(verifier), pending.code_challenge)):
            raise SignInRefused(_OTHER_BROWSER, "no or wrong PKCE verifier cookie", next_path)
        if not code or len(code) > MAX_CODE or not code.isascii() or not code.isprintable():
            raise SignInRefused(_NOT_COMPLETED, "no or malformed code", next_path)
        answer = self._exchange(code, verifier, pending, next_path)
        principal = self._verified(answer, pending, next_path)
        return SignedIn(principal=principal, next_path=pending.next_path)

    def _exchange(self, code: str, verifier: str, pending: PendingSignIn,
                  next_path: str | None) -> dict[str, Any]:
        """The token request (RFC 6749 4.1.3, RFC 7636 4.5) and its answer."""
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": pending.redirect_uri, "client_id": self.client_id,
                "code_verifier": verifier}
        headers = {}
        if self._client_secret is not None:
            pair = (f"{urllib.parse.quote_plus(self.client_id)}:"
                    f"{urllib.parse.quote_plus(self._client_secret)}")
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            endpoints = self.endpoints.get()
            answer = post_form(endpoints.token, form, headers=headers, timeout=self.timeout)
        except TokenRequestError as error:
            log.warning("OIDC sign-in: the token request failed: %s", error)
            raise SignInRefused(_NOT_COMPLETED, "token request refused" + (
                f" ({error.error})" if error.error else ""), next_path) from None
        except KeySetError:
            raise SignInRefused(_UNAVAILABLE, "identity provider unavailable",
                                next_path) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            raise SignInRefused(_NOT_COMPLETED, "no access token in the token answer",
                                next_path)
        token_type = answer.get("token_type")
        if token_type is not None and str(token_type).lower() != "bearer":
            raise SignInRefused(_NOT_ACCEPTED, "not a bearer access token", next_path)
        return answer

    def _verified(self, answer: dict[str, Any], pending: PendingSignIn,
                  next_path: str | None) -> Principal:
        """The access token's principal, once it and the ID token (if any) hold."""
        try:
            principal = self.access.verify(answer["access_token"])
        except OidcError as error:
            raise SignInRefused(_NOT_ACCEPTED, f"access token: {error.reason}",
                                next_path) from None
        id_token = answer.get("id_token")
        if id_token is None:
            return principal
        if not isinstance(id_token, str):
            raise SignInRefused(_NOT_ACCEPTED, "ID token: malformed", next_path)
        try:
            claims = self.id_tokens.claims(id_token)
        except OidcError as error:
            raise SignInRefused(_NOT_ACCEPTED, f"ID token: {error.reason}",
                                next_path) from None
        nonce = claims.get("nonce")
        if not (isinstance(nonce, str) and nonce.isascii()
                and hmac.compare_digest(nonce, pending.nonce)):
            raise SignInRefused(_NOT_ACCEPTED, "ID token: wrong nonce", next_path)
        if claims.get("azp", self.client_id) != self.client_id:  # OIDC Core 3.1.3.7
            raise SignInRefused(_NOT_ACCEPTED, "ID token: another client's", next_path)
        return principal

