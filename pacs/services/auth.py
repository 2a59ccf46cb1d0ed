"""Who may do what: roles, and the API tokens HTTP clients present as ``Authorization:
Bearer <token>`` (RFC 6750).

Roles (issue 13): ``viewer`` reads (QIDO-RS, WADO-RS, WADO-URI, C-FIND, C-MOVE, C-GET, the
read-only UI); ``uploader`` stores (STOW-RS); ``qa`` is a viewer who also reviews (the queue,
accept, reject, correct, merge, audit reading); ``admin`` may do everything (tokens, purge,
jobs, the AE registry). :func:`allows` is the one place that says which role includes which;
the front ends only declare the role each action needs.

A token is ``pacs_<lookup id>_<secret>``: the lookup id (12 hex digits, not secret) finds its
row, the secret is 32 random bytes (``secrets.token_urlsafe``). The index keeps only the
SHA-256 of the whole token: for a secret of 256 random bits a plain hash is as strong as a
slow one (no dictionary to try), and costs a microsecond per request. Hashes are compared with
:func:`hmac.compare_digest`, and a token whose lookup id is unknown is compared against a
dummy hash all the same, so the time taken does not tell which lookup ids exist. Secrets are
shown once, at creation, and never logged; the audit trail records each creation and
revocation (in the same transaction) with the token's name and role.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pacs.services.errors import AlreadyExists, InvalidValue, PacsError
from storage.index import Index, IndexDataError, TokenRecord

# TokenRecord: what the front ends format (they never import the index themselves).
__all__ = ["Authenticator", "CredentialRefused", "Principal", "Role", "TokenError",
           "TokenExists", "TokenRecord", "TokenService", "allows"]

PREFIX = "pacs_"
LOOKUP_ID_HEX = 12  # 48 bits: a collision among a site's tokens is beyond reach
MAX_BEARER = 200  # characters; a real token has 5 + 12 + 1 + 43
MAX_EXPIRES_DAYS = 3650
USE_RECORDED_EVERY = dt.timedelta(minutes=1)  # last_used_at: at most one write a minute
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_LOOKUP = re.compile(rf"[0-9a-f]{{{LOOKUP_ID_HEX}}}")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


class Role(StrEnum):
    VIEWER = "viewer"
    UPLOADER = "uploader"
    QA = "qa"
    ADMIN = "admin"


_INCLUDES: dict[Role, frozenset[Role]] = {
    Role.VIEWER: frozenset({Role.VIEWER}),
    Role.UPLOADER: frozenset({Role.UPLOADER}),
    Role.QA: frozenset({Role.QA, Role.VIEWER}),
    Role.ADMIN: frozenset(Role),
}


def allows(role: Role, needed: Role) -> bool:
    """True when a principal with ``role`` may do what needs ``needed``."""
    return needed in _INCLUDES[role]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an API token's name or an OIDC subject, with its roles.

    :attr:`actor` is what the audit trail records (``token:NAME``, ``oidc:SUBJECT``)."""

    name: str
    roles: frozenset[Role]
    kind: str = "token"  # "token" (API token) or "oidc" (an identity provider's bearer token)
    display_name: str | None = field(default=None, compare=False)  # e.g. preferred_username
    expires_at: dt.datetime | None = field(default=None, compare=False)
    """When the credential it was proved with ends, if it says (an OIDC token's ``exp``): a
    web UI session opened with it ends then too."""

    @classmethod
    def of(cls, name: str, *roles: Role, kind: str = "token") -> Principal:
        return cls(name=name, roles=frozenset(roles), kind=kind)

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def may(self, needed: Role) -> bool:
        """True when one of this principal's roles includes ``needed``."""
        return any(allows(role, needed) for role in self.roles)


class CredentialRefused(PacsError):
    """A bearer credential that is not accepted. ``reason`` says why in a few words for the
    audit trail ("expired", "wrong audience"), or is None when saying more would tell which
    API tokens exist; the client gets a plain 401 either way. Never holds the credential."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "invalid credential")
        self.reason = reason


class BearerVerifier(Protocol):
    """Checks one kind of bearer credential (API tokens)."""

    def authenticate(self, bearer: str) -> Principal | None: ...


class ExplainingVerifier(Protocol):
    """Checks one kind of bearer credential and says why one is refused (OIDC tokens:
    :meth:`pacs.services.oidc.OidcVerifier.verify`)."""

    def verify(self, bearer: str) -> Principal:
        """The principal; :class:`CredentialRefused` with the reason otherwise."""
        ...


class Authenticator:
    """The one place a bearer credential becomes a :class:`Principal`: an API token
    (``pacs_...``) is checked against the index, anything else against the OIDC issuer's
    keys when OIDC is configured."""

    def __init__(self, *, tokens: BearerVerifier,
                 oidc: ExplainingVerifier | None = None) -> None:
        self.tokens = tokens
        self.oidc = oidc

    def verify(self, bearer: str) -> Principal:
        """The principal of ``bearer``; :class:`CredentialRefused` for a credential neither
        accepts (with the OIDC verifier's reason; none for an API token)."""
        if bearer.startswith(PREFIX) or self.oidc is None:
            found = self.tokens.authenticate(bearer)
            if found is None:
                raise CredentialRefused()
            return found
        return self.oidc.verify(bearer)

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal of ``bearer``; None for a credential neither accepts."""
        try:
            return self.verify(bearer)
        except CredentialRefused:
            return None


class TokenError(InvalidValue):
    """A token cannot be made as asked (the message says why, for the user)."""


class TokenExists(TokenError, AlreadyExists):
    """A token of that name exists already (revoked ones too: names are never reused)."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TokenService:
    """Creates, lists, revokes and checks API tokens kept in the index."""

    def __init__(self, *, index: Index, clock: Callable[[], dt.datetime] = _now) -> None:
        self.index = index
        self.clock = clock

    def create(self, name: str, role: Role | str, expires_days: int | None = None, *,
               who: str = "cli") -> tuple[TokenRecord, str]:
        """A new token: its record and its secret, which is never shown again."""
        if not NAME_PATTERN.fullmatch(name):
            raise TokenError("a token name is 1 to 64 letters, digits or . _ @ - "
                             "(starting with a letter or digit)")
        try:
            role = Role(role)
        except ValueError:
            raise TokenError(f"no role {role!r}: one of "
                             f"{', '.join(r.value for r in Role)}") from None
        if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRES_DAYS:
            raise TokenError(f"expiry is 1 to {MAX_EXPIRES_DAYS} days")
        now = self.clock()
        expires_at = now + dt.timedelta(days=expires_days) if expires_days else None
        lookup_id = secrets.token_hex(LOOKUP_ID_HEX // 2)
        token = f"{PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}"
        try:
            with self.index.unit_of_work(write=True) as repository:
                if repository.tokens.by_name(name) is None:
                    record = repository.tokens.add(
                        name=name, lookup_id=lookup_id, role=role.value,
                        secret_sha256=_hash(token), created_at=now, expires_at=expires_at,
                    )
                    repository.audit.append(
                        actor=who, action="token-create", outcome="created",
                        detail={"name": name, "role": role.value,
                                "expires_at": expires_at.isoformat() if expires_at else None},
                    )
                    return record, token
        except IndexDataError:
            # the name is unique in the index: another process may have taken it since the check
            with self.index.unit_of_work() as repository:
                if repository.tokens.by_name(name) is None:
                    raise
        raise TokenExists(f"a token named {name!r} exists already")

    def list(self) -> list[TokenRecord]:
        """Every token (revoked and expired ones too), by name; never a secret or its hash."""
        with self.index.unit_of_work() as repository:
            return repository.tokens.all()

    def revoke(self, name: str, *, who: str = "cli") -> bool:
        """Revoke a token at once; False when there is no token of that name."""
        with self.index.unit_of_work(write=True) as repository:
            if not repository.tokens.revoke(name, self.clock()):
                return False
            repository.audit.append(actor=who, action="token-revoke", outcome="revoked",
                                      detail={"name": name})
        return True

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal a bearer token stands for; None when it is malformed, unknown,
        wrong, revoked or expired (the caller answers 401 alike for all, and logs no token).

        A use is written to ``last_used_at`` at most once a minute per token, so that a busy
        client does not cost a write transaction per request."""
        if len(bearer) > MAX_BEARER or not bearer.isascii() or not bearer.startswith(PREFIX):
            return None
        lookup_id, _, _secret = bearer[len(PREFIX):].partition("_")
        if not _LOOKUP.fullmatch(lookup_id):
            return None
        with self.index.unit_of_work() as repository:
            found = repository.tokens.credential(lookup_id)
        record, stored = found if found is not None else (None, _DUMMY_HASH)
        matches = hmac.compare_digest(_hash(bearer), stored)
        if record is None or not matches:
            return None
        now = self.clock()
        if record.revoked_at is not None:
            return None
        if record.expires_at is not None and record.expires_at <= now:
            return None
        if record.last_used_at is None or now - record.last_used_at >= USE_RECORDED_EVERY:
            with self.index.unit_of_work(write=True) as repository:
                repository.tokens.touch(record.id, now)
        return Principal.of(record.name, Role(record.role))
