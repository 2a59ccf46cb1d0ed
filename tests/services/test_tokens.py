"""API tokens and roles on a real index (SQLite and PostgreSQL): a token works until it is
revoked or expires, the index holds only its hash, hashes are compared in constant time, and
a busy token's last use is written at most once a minute."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text

from pacs.services import auth
from pacs.services.auth import Principal, Role, TokenError, TokenService, allows
from storage.index import Index

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(index: Index, clock: Clock) -> TokenService:
    return TokenService(index=index, clock=clock)


def _rows(index: Index) -> list[dict[str, Any]]:
    with index.engine.connect() as connection:
        return [dict(row._mapping) for row in
                connection.execute(text("SELECT * FROM api_token ORDER BY name"))]


def _audit(index: Index) -> list[tuple[str, str, str, dict[str, Any]]]:
    with index.unit_of_work() as repository:
        return [(e.actor, e.action, e.outcome, e.detail)
                for e in repository.audit.events(limit=100)
                if e.action.startswith("token-")]


@pytest.mark.parametrize(("role", "needed", "allowed"), [
    (Role.VIEWER, Role.VIEWER, True), (Role.VIEWER, Role.UPLOADER, False),
    (Role.VIEWER, Role.QA, False), (Role.VIEWER, Role.ADMIN, False),
    (Role.UPLOADER, Role.UPLOADER, True), (Role.UPLOADER, Role.VIEWER, False),
    (Role.UPLOADER, Role.QA, False),
    (Role.QA, Role.VIEWER, True), (Role.QA, Role.QA, True), (Role.QA, Role.UPLOADER, False),
    (Role.QA, Role.ADMIN, False),
    (Role.ADMIN, Role.VIEWER, True), (Role.ADMIN, Role.UPLOADER, True),
    (Role.ADMIN, Role.QA, True), (Role.ADMIN, Role.ADMIN, True),
])
def test_roles_include_what_the_issue_says(role: Role, needed: Role, allowed: bool) -> None:
    assert allows(role, needed) is allowed


def test_created_token_authenticates_as_its_name_and_role(
    tokens: TokenService, index: Index
) -> None:
    record, secret = tokens.create("ohif", "viewer")

    assert record.name == "ohif" and record.role == "viewer"
    assert record.created_at == T0 and record.expires_at is None
    assert secret.startswith(f"pacs_{record.lookup_id}_") and len(secret) > 50
    assert tokens.authenticate(secret) == Principal.of("ohif", Role.VIEWER)
    assert _audit(index) == [("cli", "token-create", "created",
                              {"name": "ohif", "role": "viewer", "expires_at": None})]


def test_index_keeps_only_the_hash_of_the_secret(tokens: TokenService, index: Index) -> None:
    _, secret = tokens.create("uploader-1", Role.UPLOADER)

    (row,) = _rows(index)
    cells = " ".join(str(value) for value in row.values())
    assert secret not in cells and secret.rsplit("_", 1)[1] not in cells
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    with index.engine.connect() as connection:
        audit = " ".join(str(v) for r in connection.execute(text("SELECT * FROM audit_event"))
                         for v in r)
    assert secret.rsplit("_", 1)[1] not in audit


def test_list_names_every_token_without_secrets(tokens: TokenService, clock: Clock) -> None:
    tokens.create("b-admin", "admin", 30)
    tokens.create("a-qa", "qa")
    tokens.revoke("a-qa")

    listed = tokens.list()

    assert [(t.name, t.role) for t in listed] == [("a-qa", "qa"), ("b-admin", "admin")]
    assert listed[0].revoked_at == T0 and listed[1].revoked_at is None
    assert listed[1].expires_at == T0 + dt.timedelta(days=30)
    assert not any(hasattr(t, "secret_sha256") for t in listed)


def test_wrong_malformed_and_unknown_tokens_are_refused(tokens: TokenService) -> None:
    record, secret = tokens.create("ws", "qa")
    lookup = record.lookup_id
    other_secret = tokens.create("other", "admin")[1].rsplit("_", 1)[1]

    for bearer in [
        f"pacs_{lookup}_{other_secret}",  # right id, another token's secret
        secret[:-1] + ("A" if secret[-1] != "A" else "B"),
        secret + "x", "", "pacs_", f"pacs_{lookup}", "Bearer " + secret,
        "pacs_0123456789ab_" + other_secret,  # an id that does not exist
        "pacs_XYZ_abc", secret + "é", "pacs_" + "a" * 5000,
    ]:
        assert tokens.authenticate(bearer) is None, bearer
    assert tokens.authenticate(secret) == Principal.of("ws", Role.QA)


def test_hashes_are_compared_in_constant_time_also_for_an_unknown_id(
    tokens: TokenService, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, secret = tokens.create("ws", "viewer")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    wrong = secret[:-4] + "AAAA"
    unknown = f"pacs_{'0' * 12}_{secret.rsplit('_', 1)[1]}"

    assert tokens.authenticate(wrong) is None
    assert tokens.authenticate(unknown) is None
    assert tokens.authenticate(secret) is not None

    stored = _rows(index)[0]["secret_sha256"]
    assert compared == [
        (hashlib.sha256(wrong.encode()).hexdigest(), stored),
        (hashlib.sha256(unknown.encode()).hexdigest(), auth._DUMMY_HASH),
        (stored, stored),
    ]


def test_revoked_token_stops_working_and_is_audited(tokens: TokenService, index: Index,
                                                    clock: Clock) -> None:
    _, secret = tokens.create("ws", "viewer")
    assert tokens.authenticate(secret) is not None
    clock.advance(minutes=5)

    assert tokens.revoke("ws") is True
    assert tokens.authenticate(secret) is None
    assert tokens.revoke("nobody") is False
    clock.advance(minutes=5)
    assert tokens.revoke("ws") is True  # again: the first revocation time stays
    assert tokens.list()[0].revoked_at == T0 + dt.timedelta(minutes=5)
    assert [a[:3] for a in _audit(index)] == [
        ("cli", "token-revoke", "revoked"), ("cli", "token-revoke", "revoked"),
        ("cli", "token-create", "created"),
    ]


def test_token_expires_after_its_days(tokens: TokenService, clock: Clock) -> None:
    _, secret = tokens.create("temp", "uploader", expires_days=2)

    clock.advance(days=2, seconds=-1)
    assert tokens.authenticate(secret) == Principal.of("temp", Role.UPLOADER)
    clock.advance(seconds=1)
    assert tokens.authenticate(secret) is None


def test_last_use_is_written_at_most_once_a_minute(tokens: TokenService, index: Index,
                                                   clock: Clock) -> None:
    _, secret = tokens.create("busy", "viewer")
    assert tokens.list()[0].last_used_at is None

    assert tokens.authenticate(secret) is not None
    assert tokens.list()[0].last_used_at == T0
    clock.advance(seconds=59)
    assert tokens.authenticate(secret) is not None
    assert tokens.list()[0].last_used_at == T0  # not written again within the minute
    clock.advance(seconds=1)
    assert tokens.authenticate(secret) is not None
    assert tokens.list()[0].last_used_at == T0 + dt.timedelta(minutes=1)


@pytest.mark.parametrize(("name", "role", "days", "message"), [
    ("", "viewer", None, "token name"),
    ("has space", "viewer", None, "token name"),
    ("x" * 65, "viewer", None, "token name"),
    ("ok", "superuser", None, "no role"),
    ("ok", "viewer", 0, "expiry"),
    ("ok", "viewer", 100_000, "expiry"),
])
def test_bad_requests_are_refused_and_nothing_is_stored(
    tokens: TokenService, index: Index, name: str, role: str, days: int | None, message: str
) -> None:
    with pytest.raises(TokenError, match=message):
        tokens.create(name, role, days)
    assert _rows(index) == []


def test_a_name_is_taken_once(tokens: TokenService, index: Index) -> None:
    _, first = tokens.create("ws", "viewer")
    with pytest.raises(TokenError, match="exists already"):
        tokens.create("ws", "admin")
    assert tokens.authenticate(first) == Principal.of("ws", Role.VIEWER)
    assert len(_rows(index)) == 1


def test_concurrent_creates_of_one_name_make_one_token(tokens: TokenService,
                                                       index: Index) -> None:
    """On PostgreSQL both transactions may pass the check; the unique index decides."""
    barrier = threading.Barrier(6)

    def create(_: int) -> str:
        barrier.wait()
        try:
            return tokens.create("race", "viewer")[1]
        except TokenError as error:
            return str(error)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(create, range(6)))

    made = [r for r in results if r.startswith("pacs_")]
    assert len(made) == 1
    assert sorted(set(results) - set(made)) == ["a token named 'race' exists already"]
    assert tokens.authenticate(made[0]) == Principal.of("race", Role.VIEWER)
    assert len(_rows(index)) == 1
