"""A test identity provider made on the spot: signing keys, JWKS files, tokens, and a
loopback issuer serving OIDC discovery and its JWKS over plain HTTP on 127.0.0.1.

    key = signing_key("rsa")
    write_jwks(tmp_path / "jwks.json", key)
    token = key.sign(claims(ISSUER, AUDIENCE, roles=["viewer"]))

    with LoopbackIssuer(key) as idp:                 # idp.issuer: http://127.0.0.1:PORT/realms/test
        token = key.sign(claims(idp.issuer, AUDIENCE))
        idp.requests["/realms/test/jwks"]            # how many times the keys were fetched

Besides good tokens, the refused kinds: :func:`unsigned_token` (``alg: none``) and
:func:`hmac_token` (HS256 with any secret, e.g. an RSA public key's PEM: the HS/RS confusion).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.pki import KeyType, PrivateKey, make_key

KeyKind = Literal["rsa", "ec", "ed25519"]
AUDIENCE = "pacs"
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


class LoopbackIssuer:
    """An OIDC issuer on 127.0.0.1 (port 0) serving ``{issuer}/.well-known/openid-
    configuration`` and ``{issuer}/jwks``; ``keys`` may be changed while it runs (rotation),
    ``status`` set to an HTTP error to make it fail, ``discovery`` entries overridden; and
    ``requests`` counts the GETs per path."""

    def __init__(self, *keys: SigningKey | Mapping[str, Any], realm: str = "test") -> None:
        self.keys: list[SigningKey | Mapping[str, Any]] = list(keys)
        self.status = 200
        self.discovery: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.prefix = f"/realms/{realm}"
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

    def _document(self, path: str) -> dict[str, Any] | None:
        if path == self.discovery_path:
            return {"issuer": self.issuer, "jwks_uri": self.issuer + "/jwks",
                    "authorization_endpoint": self.issuer + "/auth",
                    "token_endpoint": self.issuer + "/token",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    **self.discovery}
        if path == self.jwks_path:
            return jwks(*self.keys)
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with issuer._lock:
                    issuer.requests[self.path] += 1
                    document = issuer._document(self.path)
                    status = issuer.status
                if document is None:
                    status = 404
                body = json.dumps(document).encode() if status == 200 else b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
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
