"""Index records of API tokens. SQL only; the rules (format, hashing, roles, expiry, how often
a use is recorded) live in ``pacs.services.auth``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from storage.index.models import api_token


@dataclass(frozen=True)
class TokenRecord:
    """A token as listed: everything but its secret's hash."""

    id: int
    name: str
    lookup_id: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def _aware(at: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes (what was written was UTC)."""
    if at is None or at.tzinfo is not None:
        return at
    return at.replace(tzinfo=UTC)


def _record(row: Any) -> TokenRecord:
    created = _aware(row.created_at)
    assert created is not None
    return TokenRecord(
        id=row.id, name=row.name, lookup_id=row.lookup_id, role=row.role, created_at=created,
        expires_at=_aware(row.expires_at), last_used_at=_aware(row.last_used_at),
        revoked_at=_aware(row.revoked_at),
    )


_LISTED = (api_token.c.id, api_token.c.name, api_token.c.lookup_id, api_token.c.role,
           api_token.c.created_at, api_token.c.expires_at, api_token.c.last_used_at,
           api_token.c.revoked_at)


class TokenRecords:
    """API token reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(self, *, name: str, lookup_id: str, role: str, secret_sha256: str,
            created_at: datetime, expires_at: datetime | None) -> TokenRecord:
        self.connection.execute(insert(api_token).values(
            name=name, lookup_id=lookup_id, role=role, secret_sha256=secret_sha256,
            created_at=created_at, expires_at=expires_at,
        ))
        found = self.by_name(name)
        assert found is not None
        return found

    def by_name(self, name: str) -> TokenRecord | None:
        row = self.connection.execute(select(*_LISTED).where(api_token.c.name == name)).first()
        return _record(row) if row else None

    def all(self) -> list[TokenRecord]:
        rows = self.connection.execute(select(*_LISTED).order_by(api_token.c.name))
        return [_record(row) for row in rows]

    def credential(self, lookup_id: str) -> tuple[TokenRecord, str] | None:
        """The token a bearer names, with the stored hash to compare against."""
        row = self.connection.execute(
            select(*_LISTED, api_token.c.secret_sha256).where(api_token.c.lookup_id == lookup_id)
        ).first()
        return (_record(row), row.secret_sha256) if row else None

    def revoke(self, name: str, at: datetime) -> bool:
        """Mark a token revoked (kept, never deleted); False when no token has that name. A
        token revoked before keeps its first revocation time."""
        if self.by_name(name) is None:
            return False
        self.connection.execute(
            update(api_token)
            .where(api_token.c.name == name, api_token.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return True

    def touch(self, token_id: int, at: datetime) -> None:
        """Record a use (the caller decides how often)."""
        self.connection.execute(
            update(api_token).where(api_token.c.id == token_id).values(last_used_at=at)
        )
