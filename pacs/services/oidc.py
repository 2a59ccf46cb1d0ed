"""OpenID Connect bearer tokens: a JWT access token (RFC 9068) an identity provider signed, as
OHIF and the cloud DICOMweb services send it in ``Authorization: Bearer``.

A token is accepted when it is signed by one of the issuer's keys (its JWKS, RFC 7517) with an
asymmetric algorithm that key allows, and its claims hold (RFC 7519 4.1): ``exp`` not past and
``nbf`` / ``iat`` not ahead (both with :data:`LEEWAY`), ``iss`` exactly the configured issuer,
``aud`` containing the configured audience, ``sub`` present. The algorithms a key allows come
from the key (its ``kty``, ``crv`` and ``alg``), never from the token's header alone: ``alg:
none``, HMAC (which would let a public key serve as a shared secret, the "HS/RS confusion") and
symmetric ``oct`` keys are refused whatever the token says.

Keys come from a JWKS file (:class:`JwksFile`, for sites without outbound access; re-read when
it changes) or from the issuer (:class:`IssuerKeys`: OIDC Discovery 4, then its ``jwks_uri``),
fetched on first use, cached, and fetched again when a token names a key id not in the cache
(a rotation), at most once per :data:`REFRESH_INTERVAL` so that tokens with made-up key ids
cost no requests; the cache is also renewed after :data:`MAX_KEY_AGE` so that a key the issuer
withdrew stops working. A start with the issuer unreachable is not an error: tokens fail with
"keys unavailable" until it answers.

Roles come from one claim (default ``roles``; a dotted path such as Keycloak's
``realm_access.roles``), a list of names or one space-separated string. Names equal to a
:class:`~pacs.services.auth.Role` value count; others are ignored. A valid token with no known
role authenticates with no roles: the principal is known (and audited) but may do nothing
(the front end answers 403, not 401).

:meth:`OidcVerifier.verify` raises :class:`OidcError` whose ``reason`` is a few words for the
audit trail ("expired", "wrong audience", ...); :meth:`OidcVerifier.authenticate` returns None
instead. The token itself is never logged.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from pacs.services.auth import CredentialRefused, Principal, Role

log = logging.getLogger(__name__)

MAX_TOKEN = 16 * 1024  # characters; a token with a few dozen roles is 2 kB
MAX_DOCUMENT = 1 << 20  # bytes of a discovery document or a JWKS
MAX_NAME = 255  # characters of a subject or a display name
LEEWAY = 60.0  # seconds of clock skew allowed on exp, nbf and iat
REFRESH_INTERVAL = 30.0  # seconds: at most one fetch of the issuer's keys per interval
MAX_KEY_AGE = 3600.0  # seconds: the issuer's keys are fetched again after this long
FETCH_TIMEOUT = 5.0  # seconds per request to the issuer
MIN_RSA_BITS = 2048
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
ALLOWED_ALGORITHMS = RSA_ALGORITHMS | frozenset(_EC_ALGORITHM.values()) | {"EdDSA"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")


class OidcError(CredentialRefused):
    """A bearer token that is not accepted; ``reason`` says why in a few words (for the
    audit trail, never for the client, which gets a plain 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: str = reason


class KeySetError(ValueError):
    """A discovery document or JWKS that cannot be used (for the log, not for a peer)."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key of the issuer and the algorithms it may verify."""

    kid: str | None
    key: Any  # a cryptography public key object
    algorithms: frozenset[str]


@dataclass(frozen=True)
class KeySet:
    keys: tuple[VerificationKey, ...]

    def find(self, kid: str | None) -> VerificationKey | None:
        """The key with this id; without an id, the only key when there is exactly one."""
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return next((key for key in self.keys if key.kid == kid), None)


def parse_jwks(document: Any) -> KeySet:
    """The signing keys of a JWKS (RFC 7517 5) this verifier can use; keys for encryption,
    symmetric keys, unknown key types and RSA keys under 2048 bits are left out (logged)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError("not a JWKS (a JSON object with a 'keys' list)")
    keys = []
    for jwk in document["keys"]:
        try:
            keys.append(_key(jwk))
        except KeySetError as error:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            log.warning("OIDC: key %r of the JWKS is not used: %s", kid, error)
    return KeySet(tuple(keys))


def _key(jwk: Any) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise KeySetError("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeySetError("kid is not a string")
    if jwk.get("use", "sig") != "sig":
        raise KeySetError("not a signing key (use)")
    operations = jwk.get("key_ops")
    if operations is not None and (not isinstance(operations, list) or "verify" not in operations):
        raise KeySetError("not a verification key (key_ops)")
    # the public part only: a JWKS that leaks a private key must not make us use it
    public = {name: value for name, value in jwk.items() if name not in _PRIVATE_MEMBERS}
    kty, curve = public.get("kty"), public.get("crv")
    if kty == "RSA":
        allowed = RSA_ALGORITHMS
        key = _read(RSAAlgorithm.from_jwk, public)
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            raise KeySetError(f"RSA keys need at least {MIN_RSA_BITS} bits")
    elif kty == "EC" and curve in _EC_ALGORITHM:
        allowed = frozenset({_EC_ALGORITHM[curve]})
        key = _read(ECAlgorithm.from_jwk, public)
    elif kty == "OKP" and curve in _OKP_CURVES:
        allowed = frozenset({"EdDSA"})
        key = _read(OKPAlgorithm.from_jwk, public)
    else:  # "oct" (a shared secret) above all: never a key for tokens that others sign
        raise KeySetError(f"key type {kty!r} (curve {curve!r}) not accepted")
    alg = public.get("alg")
    if alg is not None:
        if alg not in allowed:
            raise KeySetError(f"algorithm {alg!r} not allowed for a {kty} key")
        allowed = frozenset({alg})
    return VerificationKey(kid=kid, key=key, algorithms=allowed)


def _read(from_jwk: Callable[[Any], Any], jwk: dict[str, Any]) -> Any:
    try:
        return from_jwk(jwk)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise KeySetError(f"unreadable {jwk.get('kty')} key") from None


class KeySource(Protocol):
    """Where the issuer's keys come from (a file, or the issuer over HTTPS)."""

    def find(self, kid: str | None) -> VerificationKey:
        """The key for ``kid``; :class:`OidcError` "unknown key" or "keys unavailable"."""
        ...


def _found(keys: KeySet | None, kid: str | None) -> VerificationKey:
    if keys is None:
        raise OidcError("keys unavailable")
    key = keys.find(kid)
    if key is None:
        raise OidcError("unknown key")
    return key


class JwksFile:
    """Keys from a JWKS file, read at start and again whenever it changes (its inode, size or
    modification time: replace it by renaming a new file over it). A file that cannot be
    read or parsed leaves the keys read last in use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys: KeySet | None = None
        self._reload()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns

    def _reload(self) -> None:
        with self._lock:
            signature = self._signature()
            if signature is None or signature == self._seen:
                return
            self._seen = signature
            try:
                self._keys = parse_jwks(json.loads(self.path.read_bytes()))
            except (OSError, ValueError) as error:
                log.warning("OIDC: the JWKS file %s cannot be used (%s); keeping the keys "
                            "read before", self.path, error)
                return
            log.info("OIDC: %d keys read from %s", len(self._keys.keys), self.path)

    def find(self, kid: str | None) -> VerificationKey:
        if self._signature() != self._seen:
            self._reload()
        return _found(self._keys, kid)


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """``url`` when it may be fetched: HTTPS, or HTTP to a loopback address (tests, a local
    identity provider); anything else could be read or changed on the way."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return url
    raise KeySetError(f"{url!r} is not an https:// URL (http:// only to localhost)")


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url: str, *, redirects: bool = True) -> urllib.request.OpenerDirector:
    # a loopback issuer is reached directly, never through a proxy from the environment
    proxies = urllib.request.ProxyHandler(
        {} if is_loopback(urllib.parse.urlsplit(url).hostname) else None
    )
    return urllib.request.build_opener(
        proxies, _CheckedRedirect() if redirects else _NoRedirect())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        return None  # urllib then raises the 3xx as an HTTPError


def fetch_json(url: str, *, timeout: float = FETCH_TIMEOUT) -> Any:
    """GET a JSON document of at most :data:`MAX_DOCUMENT` bytes; :class:`KeySetError` for
    anything else (unreachable, an HTTP error, too large, not JSON)."""
    check_url(url)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as error:
        error.close()
        raise KeySetError(f"{url}: HTTP {error.code}") from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError, timeouts, ...
        raise KeySetError(f"{url}: {getattr(error, 'reason', None) or error}") from None
    return _json(url, body)


def _json(url: str, body: bytes) -> Any:
    if len(body) > MAX_DOCUMENT:
        raise KeySetError(f"{url}: larger than {MAX_DOCUMENT} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise KeySetError(f"{url}: not JSON") from None


class TokenRequestError(KeySetError):
    """A token endpoint that did not give tokens (RFC 6749 5.2); ``error`` is the error code
    it answered, when it said one (``invalid_grant``, ...)."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


_ERROR_CODE = re.compile(r"[a-z_]{1,40}")  # RFC 6749 5.2: error codes are a few words


def post_form(url: str, form: Mapping[str, str], *, headers: Mapping[str, str] | None = None,
              timeout: float = FETCH_TIMEOUT) -> Any:
    """POST ``form`` (``application/x-www-form-urlencoded``) and read a JSON answer of at most
    :data:`MAX_DOCUMENT` bytes: a token request (RFC 6749 4.1.3). Redirects are not followed
    (the form holds a one-time code). :class:`TokenRequestError` for anything but a 200 with
    JSON."""
    check_url(url)
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(dict(form)).encode("ascii"), method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Accept": "application/json", **(headers or {})})
    try:
        with _opener(url, redirects=False).open(request, timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as error:
        code = None
        try:
            answer = json.loads(error.read(MAX_DOCUMENT))
            found = answer.get("error") if isinstance(answer, dict) else None
            code = found if isinstance(found, str) and _ERROR_CODE.fullmatch(found) else None
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            error.close()
        raise TokenRequestError(f"{url}: HTTP {error.code}" + (f" {code}" if code else ""),
                                code) from None
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise TokenRequestError(f"{url}: {getattr(error, 'reason', None) or error}") from None
    try:
        return _json(url, body)
    except KeySetError as error:
        raise TokenRequestError(str(error)) from None


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def discover(issuer: str, *, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """The issuer's provider metadata (OIDC Discovery 4: ``{issuer}/.well-known/openid-
    configuration``), which must name the same issuer (4.3)."""
    document = fetch_json(discovery_url(issuer), timeout=timeout)
    if not isinstance(document, dict):
        raise KeySetError("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise KeySetError(f"the discovery document names issuer "
                          f"{document.get('issuer')!r}, not {issuer!r}")
    return document


class IssuerKeys:
    """The issuer's keys, found through OIDC Discovery (``{issuer}/.well-known/openid-
    configuration`` → ``jwks_uri``) and cached.

    Fetched on first use; again when a token names an unknown key id or the cache is older
    than ``max_age``, but never more than once per ``refresh_interval`` (successful or not),
    so that neither tokens with random key ids nor an unreachable issuer cost a request each.
    While one thread fetches, the others wait for it only when their key is not cached."""

    def __init__(self, issuer: str, *, refresh_interval: float = REFRESH_INTERVAL,
                 max_age: float = MAX_KEY_AGE, timeout: float = FETCH_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_url(issuer)
        self.issuer = issuer
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None

    @property
    def discovery_url(self) -> str:
        return discovery_url(self.issuer)

    def find(self, kid: str | None) -> VerificationKey:
        keys = self._keys
        cached = keys.find(kid) if keys is not None else None
        if cached is not None and self.clock() - self._fetched_at < self.max_age:
            return cached
        if cached is not None:  # known but old: one thread renews, the others go on
            if self._lock.acquire(blocking=False):
                try:
                    self._refresh()
                finally:
                    self._lock.release()
            return _found(self._keys, kid) if self._keys is not keys else cached
        with self._lock:
            if self._keys is keys:  # no other thread fetched while this one waited
                self._refresh()
            return _found(self._keys, kid)

    def _refresh(self) -> None:
        """Fetch the keys unless the last attempt is too recent (the caller holds the lock)."""
        now = self.clock()
        if self._attempted_at is not None and now - self._attempted_at < self.refresh_interval:
            return
        self._attempted_at = now
        try:
            keys = self._fetch()
        except KeySetError as error:
            log.warning("OIDC: cannot fetch the keys of %s: %s", self.issuer, error)
            return
        self._keys, self._fetched_at = keys, now
        log.info("OIDC: %d keys fetched from %s", len(keys.keys), self.issuer)

    def _fetch(self) -> KeySet:
        jwks_uri = discover(self.issuer, timeout=self.timeout).get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeySetError("the discovery document has no jwks_uri")
        return parse_jwks(fetch_json(check_url(jwks_uri), timeout=self.timeout))


def claim_roles(claims: Mapping[str, Any], path: str) -> frozenset[Role]:
    """The known roles named in the claim at ``path``: a list of names or one space-separated
    string; other names and other shapes give no role. Dots step into objects, unless a claim
    has the whole path as its name (Auth0's ``https://example.org/roles``)."""
    value: Any = claims.get(path)
    if value is None:
        value = claims
        for step in path.split("."):
            value = value.get(step) if isinstance(value, dict) else None
    names: Iterable[Any] = (value.split() if isinstance(value, str)
                            else value if isinstance(value, list) else ())
    known = {role.value: role for role in Role}
    return frozenset(known[name] for name in names if isinstance(name, str) and name in known)


def _name(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable():
        return value
    return None


class OidcVerifier:
    """Turns an identity provider's bearer token into a :class:`Principal` (kind ``oidc``,
    name the ``sub`` claim, display name ``preferred_username`` when there is one)."""

    def __init__(self, *, issuer: str, audience: str, keys: KeySource,
                 role_claim: str = "roles", leeway: float = LEEWAY) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.role_claim = role_claim
        self.leeway = leeway

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature and claims hold (also for an ID token,
        with the client id as the audience); :class:`OidcError` otherwise."""
        if len(token) > MAX_TOKEN:
            raise OidcError("too large")
        if not token.isascii():
            raise OidcError("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OidcError("malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise OidcError("algorithm not allowed")
        if kid is not None and not isinstance(kid, str):
            raise OidcError("malformed")
        key = self.keys.find(kid)
        if alg not in key.algorithms:
            raise OidcError("algorithm not allowed")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as error:
            raise OidcError(_reason(error)) from None
        return claims

    def verify(self, bearer: str) -> Principal:
        """The principal of a valid token; :class:`OidcError` with the reason otherwise."""
        claims = self.claims(bearer)
        subject = _name(claims.get("sub"))
        if subject is None:
            raise OidcError("bad subject")
        return Principal(
            name=subject, roles=claim_roles(claims, self.role_claim), kind="oidc",
            display_name=_name(claims.get("preferred_username")),
            expires_at=_expiry(claims.get("exp")),
        )

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal of a valid token; None otherwise (the reason is logged)."""
        try:
            return self.verify(bearer)
        except OidcError as error:
            log.info("OIDC bearer token refused: %s", error.reason)
            return None


def _expiry(exp: Any) -> dt.datetime | None:
    """``exp`` (seconds since the epoch, RFC 7519 2 NumericDate) as a UTC datetime."""
    try:
        return dt.datetime.fromtimestamp(float(exp), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _reason(error: jwt.PyJWTError) -> str:
    """A few words for the audit trail."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"no {error.claim} claim"
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid"


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed"),
)


def build_verifier(*, issuer: str, audience: str, jwks_file: Path | None = None,
                   role_claim: str = "roles") -> OidcVerifier:
    """The verifier the settings describe: keys from ``jwks_file`` when given, else from
    the issuer."""
    keys: KeySource = JwksFile(jwks_file) if jwks_file is not None else IssuerKeys(issuer)
    return OidcVerifier(issuer=issuer, audience=audience, keys=keys, role_claim=role_claim)
