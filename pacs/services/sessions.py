"""Signed-in web UI sessions: what a browser's session cookie stands for.

A session is opened by signing in with a credential the :class:`~pacs.services.auth.
Authenticator` accepts (an API token, or an OIDC access token when OIDC is configured). Its
id is 32 random bytes (``secrets.token_urlsafe``) that only the browser's cookie carries; the
index keeps the SHA-256 of it (as for API tokens, a plain hash of 256 random bits is enough),
so a copy of the database opens no session, and every server of a site sees every session.

A session ends:

- when it has been idle for ``idle`` (8 hours by default), or ``lifetime`` after sign-in
  (12 hours), whichever comes first; its use is recorded at most once a minute;
- at sign-out (the row is deleted);
- when the API token it was opened with is revoked or expires (checked at each request, in
  the same look-up). A session opened with an OIDC token lasts as sessions do, at most until
  that token's own expiry when the principal says it (``expires_at``).

Each session has a CSRF token for the UI's forms: an HMAC of the session id, so it needs no
storage and only the holder of the cookie (the page the server rendered for it) can know it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from pacs.services.auth import Principal, Role
from storage.index import Index

IDLE = dt.timedelta(hours=8)
LIFETIME = dt.timedelta(hours=12)
USE_RECORDED_EVERY = dt.timedelta(minutes=1)
MAX_SESSION_ID = 100  # characters; a real one has 43


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Session:
    """A new session: the id for the cookie (never stored) and its CSRF token."""

    id: str
    csrf: str
    expires_at: dt.datetime


class SessionService:
    """Opens, checks and ends web UI sessions kept in the index."""

    def __init__(self, *, index: Index, idle: dt.timedelta = IDLE,
                 lifetime: dt.timedelta = LIFETIME,
                 clock: Callable[[], dt.datetime] = _now) -> None:
        self.index = index
        self.idle = idle
        self.lifetime = lifetime
        self.clock = clock

    def open(self, principal: Principal, *, expires_at: dt.datetime | None = None) -> Session:
        """A session for ``principal`` (who just proved a credential). ``expires_at``: when
        that credential ends, if sooner than the session would. Ended sessions are cleared
        out here, so the table holds the live ones only."""
        now = self.clock()
        ends = now + self.lifetime
        if expires_at is not None:
            ends = min(ends, expires_at)
        session_id = secrets.token_urlsafe(32)
        with self.index.unit_of_work(write=True) as repository:
            repository.sessions.remove_ended(now - self.idle, now)
            repository.sessions.add(
                secret_sha256=_hash(session_id), principal=principal.name,
                kind=principal.kind, roles=tuple(sorted(role.value for role in principal.roles)),
                token_name=principal.name if principal.kind == "token" else None,
                created_at=now, expires_at=ends,
            )
        return Session(id=session_id, csrf=self.csrf(session_id), expires_at=ends)

    def principal(self, session_id: str) -> Principal | None:
        """Who the session stands for; None when there is no such session or it ended (idle,
        too old, or its token revoked or expired)."""
        if not session_id or len(session_id) > MAX_SESSION_ID or not session_id.isascii():
            return None
        with self.index.unit_of_work() as repository:
            found = repository.sessions.find(_hash(session_id))
        if found is None:
            return None
        now = self.clock()
        if (now >= found.expires_at or now - found.last_seen_at >= self.idle
                or (found.token_revoked_at is not None)
                or (found.token_expires_at is not None and found.token_expires_at <= now)):
            return None
        if now - found.last_seen_at >= USE_RECORDED_EVERY:
            with self.index.unit_of_work(write=True) as repository:
                repository.sessions.touch(found.id, now)
        roles = frozenset(Role(role) for role in found.roles)
        return Principal(name=found.principal, roles=roles, kind=found.kind)

    def close(self, session_id: str) -> bool:
        """Sign-out: the session is deleted; False when there was none."""
        if not session_id or len(session_id) > MAX_SESSION_ID or not session_id.isascii():
            return False
        with self.index.unit_of_work(write=True) as repository:
            return repository.sessions.remove(_hash(session_id))

    @staticmethod
    def csrf(session_id: str) -> str:
        """The CSRF token of a session's forms (HMAC-SHA-256 of its id)."""
        return hmac.new(session_id.encode("ascii"), b"pacs csrf", hashlib.sha256).hexdigest()

    @classmethod
    def csrf_matches(cls, session_id: str, token: str | None) -> bool:
        """Whether a posted form's ``token`` is its session's (compared in constant time)."""
        return token is not None and token.isascii() and hmac.compare_digest(
            cls.csrf(session_id), token)
