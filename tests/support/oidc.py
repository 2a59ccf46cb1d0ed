"""A test identity provider made on the spot: signing keys, JWKS files, tokens, and a
loopback issuer serving OIDC discovery and its JWKS over plain HTTP on 127.0.0.1.

    key = signing_key("rsa")
    write_jwks(tmp_path / "jwks.json", key)
    token = key.sign(claims(ISSUER, AUDIENCE, roles=["viewer"]))

    with LoopbackIssuer(key) as idp:                 # idp.issuer: http://127.0.0.1:PORT/realms/test
        token = key.sign(claims(idp.issuer, AUDIENCE))
        idp.requests["/realms/test/jwks"]            # how many times the keys were fetched

The issuer also signs users in for the authorization-code flow with PKCE: its authorization
endpoint consents at once for ``idp.login`` (who signs in, or the error to answer) and
redirects back with a code; its token endpoint checks the code, the redirect URI, the client
and the PKCE verifier (S256) and answers an access token and an ID token with the nonce,
signed with the first key. ``idp.authorizations`` and ``idp.token_requests`` keep what came.

Besides good tokens, the refused kinds: :func:`unsigned_token` (``alg: none``) and
:func:`hmac_token` (HS256 with any secret, e.g. an RSA public key's PEM: the HS/RS confusion).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.pki import KeyType, PrivateKey, make_key

KeyKind = Literal["rsa", "ec", "ed25519"]
AUDIENCE = "pacs"
CLIENT_ID = "pacs-ui"
ISSUER = "https://idp.example.org/realms/test"  # never contacted: for JWKS-file tests
_KIND: dict[KeyKind, tuple[KeyType, str, Any]] = {  # key type, algorithm, JWK converter
    "rsa": ("rsa2048", "RS256", RSAAlgorithm),
    "ec": ("ec256", "ES256", ECAlgorithm),
    "ed25519": ("ed25519", "EdDSA", OKPAlgorithm),
}


@dataclass(frozen=True)
class SigningKey:
    """A private key of the test identity provider, its key id and default algorithm."""

    kid: str
    private: PrivateKey
    alg: str
    kind: KeyKind

    def jwk(self, **members: Any) -> dict[str, Any]:
        """The public JWK (``kid``, ``use: sig``; no ``alg`` unless given in ``members``)."""
        public = _KIND[self.kind][2].to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", **members}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: Mapping[str, Any], *, alg: str | None = None,
             kid: str | None | Literal[False] = False) -> str:
        """A JWS of ``claims``; ``kid`` False: this key's id, None: no ``kid`` header."""
        headers = {} if kid is None else {"kid": self.kid if kid is False else kid}
        return jwt.encode(dict(claims), self.private, algorithm=alg or self.alg,
                          headers=headers)


def signing_key(kind: KeyKind = "rsa", kid: str | None = None) -> SigningKey:
    key_type, alg, _ = _KIND[kind]
    return SigningKey(kid=kid or f"{kind}-{os.urandom(4).hex()}", private=make_key(key_type),
                      alg=alg, kind=kind)


def jwks(*keys: SigningKey | Any) -> dict[str, Any]:
    """A JWKS document of these keys (anything else is put in as it is: a JWK as a mapping,
    or something that is no JWK at all)."""
    return {"keys": [key.jwk() if isinstance(key, SigningKey) else key for key in keys]}


def write_jwks(path: Path, *keys: SigningKey | Any) -> Path:
    """Write a JWKS file as an operator should: a new file renamed over the old one."""
    return write_text(path, json.dumps(jwks(*keys)))


def write_text(path: Path, text: str) -> Path:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def claims(issuer: str, audience: str | list[str] = AUDIENCE, *, subject: str = "alice",
           roles: Iterable[str] | None = ("viewer",), lifetime: int = 300,
           **extra: Any) -> dict[str, Any]:
    """Claims of an access token issued now, valid for ``lifetime`` seconds; ``extra`` adds or
    replaces claims (a value of None removes the claim)."""
    now = int(time.time())
    made: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "iat": now,
                            "nbf": now, "exp": now + lifetime,
                            "preferred_username": subject.title()}
    if roles is not None:
        made["roles"] = list(roles)
    made.update(extra)
    return {name: value for name, value in made.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    return (f"{_b64(json.dumps(dict(header)).encode())}."
            f"{_b64(json.dumps(dict(payload)).encode())}")


def unsigned_token(payload: Mapping[str, Any], kid: str | None = None) -> str:
    """An unsecured JWT (RFC 7519 6: ``alg: none``, empty signature)."""
    header = {"alg": "none", "typ": "JWT", **({"kid": kid} if kid else {})}
    return _segments(header, payload) + "."


def hmac_token(payload: Mapping[str, Any], secret: bytes, kid: str | None = None) -> str:
    """An HS256 JWS made by hand (PyJWT refuses a PEM key as an HMAC secret, rightly)."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = _segments(header, payload)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass
class Login:
    """What the next sign-in at the :class:`LoopbackIssuer` gives: who consents (at once),
    or ``error`` (RFC 6749 4.1.2.1) sent back instead of a code; ``access_claims`` and
    ``id_claims`` add or replace claims of the tokens (None removes one); ``id_token`` False
    answers without an ID token; ``consent_page`` shows a page with the link back instead of
    redirecting at once (a test can stop there)."""

    subject: str = "alice"
    roles: list[str] = field(default_factory=lambda: ["viewer"])
    error: str | None = None
    access_claims: dict[str, Any] = field(default_factory=dict)
    id_claims: dict[str, Any] = field(default_factory=dict)
    id_token: bool = True
    consent_page: bool = False  # a page with a link back (id "consent"), not a redirect
    id_key: SigningKey | None = None  # signs the ID token instead of the issuer's key


def _basic(header: str) -> tuple[str, str] | None:
    """The client id and secret of ``client_secret_basic`` (RFC 6749 2.3.1: each
    form-urlencoded, then HTTP Basic)."""
    scheme, _, encoded = header.partition(" ")
    if scheme != "Basic":
        return None
    client, _, secret = base64.b64decode(encoded).decode().partition(":")
    return urllib.parse.unquote_plus(client), urllib.parse.unquote_plus(secret)


def s256(verifier: str) -> str:
    """RFC 7636 4.2, written here apart from the server's code."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


class LoopbackIssuer:
    """An OIDC issuer on 127.0.0.1 (port 0) serving ``{issuer}/.well-known/openid-
    configuration``, ``{issuer}/jwks``, ``{issuer}/auth`` (authorization) and
    ``{issuer}/token``; ``keys`` may be changed while it runs (rotation), ``status`` set to
    an HTTP error to make discovery and keys fail, ``discovery`` entries overridden; and
    ``requests`` counts the requests per path (without the query).

    The sign-in (see the module docstring): ``login`` says how the next one goes,
    ``client_id`` / ``client_secret`` (None: a public client) are the client it knows,
    ``authorizations`` the authorization requests' parameters, ``token_requests`` the token
    requests' forms (with the ``Authorization`` header as ``authorization``),
    ``callbacks`` the URLs it sent browsers back to, and ``token_errors`` why the token
    endpoint refused, in order."""

    def __init__(self, *keys: SigningKey | Mapping[str, Any], realm: str = "test") -> None:
        self.keys: list[SigningKey | Mapping[str, Any]] = list(keys)
        self.status = 200
        self.discovery: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.prefix = f"/realms/{realm}"
        self.login = Login()
        self.client_id = CLIENT_ID
        self.client_secret: str | None = None
        self.audience = AUDIENCE
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.token_errors: list[str] = []
        self.callbacks: list[str] = []
        self._codes: dict[str, tuple[dict[str, str], Login]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}{self.prefix}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def discovery_path(self) -> str:
        return f"{self.prefix}/.well-known/openid-configuration"

    @property
    def jwks_path(self) -> str:
        return f"{self.prefix}/jwks"

    @property
    def signer(self) -> SigningKey:
        return next(key for key in self.keys if isinstance(key, SigningKey))

    def _document(self, path: str) -> dict[str, Any] | None:
        if path == self.discovery_path:
            return {"issuer": self.issuer, "jwks_uri": self.issuer + "/jwks",
                    "authorization_endpoint": self.issuer + "/auth",
                    "token_endpoint": self.issuer + "/token",
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["plain", "S256"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    **self.discovery}
        if path == self.jwks_path:
            return jwks(*self.keys)
        return None

    def _authorize(self, params: dict[str, str]) -> tuple[int, dict[str, str]]:
        """The authorization endpoint (OIDC Core 3.1.2): a redirect back with a code (or the
        login's error), or 400 for a request a real provider would refuse to redirect."""
        self.authorizations.append(params)
        redirect_uri = params.get("redirect_uri", "")
        if (params.get("client_id") != self.client_id
                or not redirect_uri.startswith(("http://", "https://"))):
            return 400, {}  # a real provider shows an error page, never redirects
        back = {"state": params["state"]} if "state" in params else {}
        login = self.login
        if login.error is not None:
            back["error"] = login.error
        elif (params.get("response_type") != "code" or "openid" not in params.get(
                "scope", "").split() or params.get("code_challenge_method") != "S256"
                or not params.get("code_challenge")):
            back["error"] = "invalid_request"
        else:
            code = secrets.token_urlsafe(24)
            self._codes[code] = (params, login)
            back["code"] = code
        self.callbacks.append(f"{redirect_uri}?{urllib.parse.urlencode(back)}")
        return 302, {"Location": self.callbacks[-1]}

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint (RFC 6749 4.1.3, RFC 7636 4.6)."""
        self.token_requests.append(form)
        refusal = None
        granted = self._codes.pop(form.get("code", ""), None)  # one use
        if form.get("grant_type") != "authorization_code":
            refusal = "unsupported_grant_type"
        elif self.client_secret is not None and _basic(form.get("authorization", "")) != (
                self.client_id, self.client_secret):
            refusal = "invalid_client"
        elif granted is None:
            refusal = "invalid_grant"
        elif (form.get("client_id") != granted[0]["client_id"]
              or form.get("redirect_uri") != granted[0]["redirect_uri"]):
            refusal = "invalid_grant"
        elif s256(form.get("code_verifier", "")) != granted[0]["code_challenge"]:
            refusal = "invalid_grant"  # RFC 7636 4.6: the verifier does not match
        if refusal is not None or granted is None:
            self.token_errors.append(refusal or "invalid_grant")
            return 400, {"error": refusal or "invalid_grant"}
        params, login = granted
        access = claims(self.issuer, self.audience, subject=login.subject, roles=login.roles,
                        **login.access_claims)
        answer: dict[str, Any] = {"access_token": self.signer.sign(access),
                                  "token_type": "Bearer", "expires_in": 300}
        if login.id_token:
            extra = {"nonce": params.get("nonce"), "azp": self.client_id, **login.id_claims}
            identity = claims(self.issuer, self.client_id, subject=login.subject, roles=None,
                              **extra)
            answer["id_token"] = (login.id_key or self.signer).sign(identity)
        return 200, answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, _, query = self.path.partition("?")
                with issuer._lock:
                    issuer.requests[path] += 1
                    if path == f"{issuer.prefix}/auth":
                        status, headers = issuer._authorize(dict(urllib.parse.parse_qsl(query)))
                        if status == 302 and issuer.login.consent_page:
                            back = html.escape(headers["Location"])
                            self._answer(200, f'<!doctype html><title>Consent</title><a '
                                         f'id="consent" href="{back}">Continue</a>'.encode(),
                                         {"Content-Type": "text/html"})
                        else:
                            self._answer(status, b"", headers)
                        return
                    document = issuer._document(self.path)
                    status = issuer.status
                if document is None:
                    status = 404
                self._answer(status, json.dumps(document).encode() if status == 200 else b"{}")

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.partition("?")[0]
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(min(length, 65536)).decode()))
                if "Authorization" in self.headers:
                    form["authorization"] = self.headers["Authorization"]
                with issuer._lock:
                    issuer.requests[path] += 1
                    if path != f"{issuer.prefix}/token":
                        self._answer(404, b"{}")
                        return
                    status, answer = issuer._token(form)
                self._answer(status, json.dumps(answer).encode(),
                             {"Cache-Control": "no-store"})

            def _answer(self, status: int, body: bytes,
                        headers: Mapping[str, str] | None = None) -> None:
                headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler

    def __enter__(self) -> LoopbackIssuer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
