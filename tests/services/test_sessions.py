"""Web UI sessions on a real index (SQLite and PostgreSQL): only the id's hash is stored, a
session ends when idle, when too old, at sign-out and when its token is revoked or expires,
and its CSRF token belongs to it alone."""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import text

from pacs.services.auth import Principal, Role, TokenService
from pacs.services.sessions import IDLE, LIFETIME, SessionService
from storage.index import Index

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def _signed_in(index: Index, clock: Clock, role: str = "qa",
               expires_days: int | None = None) -> tuple[SessionService, str, Principal]:
    tokens = TokenService(index=index, clock=clock)
    record, secret = tokens.create("reviewer", role, expires_days)
    principal = tokens.authenticate(secret)
    assert principal is not None
    sessions = SessionService(index=index, clock=clock)
    return sessions, sessions.open(principal).id, principal


def test_a_session_stands_for_its_principal_and_only_its_hash_is_kept(index: Index) -> None:
    clock = Clock()
    sessions, session_id, principal = _signed_in(index, clock)
    assert sessions.principal(session_id) == principal == Principal.of("reviewer", Role.QA)
    with index.engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_sha256 FROM ui_session")).scalars().all()
    assert stored == [hashlib.sha256(session_id.encode()).hexdigest()]
    assert sessions.principal(session_id[:-1] + "x") is None
    assert sessions.principal("") is None
    assert sessions.principal("é" * 10) is None


def test_a_session_ends_when_idle_or_too_old(index: Index) -> None:
    clock = Clock()
    sessions, session_id, _ = _signed_in(index, clock)
    for _ in range(2):  # kept alive by use, every 5 h
        clock.advance(hours=5)
        assert sessions.principal(session_id) is not None
    clock.now = T0 + LIFETIME - dt.timedelta(minutes=1)
    assert sessions.principal(session_id) is not None
    clock.now = T0 + LIFETIME
    assert sessions.principal(session_id) is None  # used all along, but 12 h old

    idle_id = sessions.open(Principal.of("reviewer", Role.QA)).id
    clock.advance(hours=1)
    assert sessions.principal(idle_id) is not None  # (the first use is recorded)
    clock.advance(seconds=IDLE.total_seconds())
    assert sessions.principal(idle_id) is None


def test_sign_out_and_revocation_end_sessions(index: Index) -> None:
    clock = Clock()
    sessions, session_id, principal = _signed_in(index, clock)
    other = sessions.open(principal).id
    assert sessions.close(session_id) is True
    assert sessions.close(session_id) is False
    assert sessions.principal(session_id) is None
    assert sessions.principal(other) is not None
    TokenService(index=index, clock=clock).revoke("reviewer")
    assert sessions.principal(other) is None  # the token's revocation ends its sessions


def test_a_session_ends_with_its_token(index: Index) -> None:
    clock = Clock()
    sessions, session_id, _ = _signed_in(index, clock, expires_days=1)
    clock.advance(hours=5)
    assert sessions.principal(session_id) is not None
    clock.now = T0 + dt.timedelta(days=1)
    assert sessions.principal(session_id) is None


def test_ended_sessions_are_cleared_at_the_next_sign_in(index: Index) -> None:
    clock = Clock()
    sessions, _, principal = _signed_in(index, clock)
    clock.advance(hours=13)
    sessions.open(principal)
    with index.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM ui_session")).scalar_one() == 1


def test_the_csrf_token_is_the_sessions_own(index: Index) -> None:
    clock = Clock()
    sessions, session_id, principal = _signed_in(index, clock)
    other = sessions.open(principal)
    token = SessionService.csrf(session_id)
    assert SessionService.csrf_matches(session_id, token)
    assert not SessionService.csrf_matches(session_id, other.csrf)
    assert not SessionService.csrf_matches(session_id, None)
    assert not SessionService.csrf_matches(session_id, "")
    assert other.csrf == SessionService.csrf(other.id)
