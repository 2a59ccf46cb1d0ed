"""Index records of web UI sessions. SQL only; the rules (ids, lifetimes, how often a use is
recorded, what ends a session) live in ``pacs.services.sessions``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from storage.index.models import api_token, ui_session
from storage.index.tokens import _aware


@dataclass(frozen=True)
class SessionRecord:
    """A session as the index holds it, with the state of the token it was opened with."""

    id: int
    principal: str
    kind: str
    roles: tuple[str, ...]
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    token_revoked_at: datetime | None = None
    token_expires_at: datetime | None = None


def _record(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row.id, principal=row.principal, kind=row.kind,
        roles=tuple(role for role in row.roles.split(",") if role),
        created_at=_when(row.created_at), last_seen_at=_when(row.last_seen_at),
        expires_at=_when(row.expires_at), token_revoked_at=_aware(row.revoked_at),
        token_expires_at=_aware(row.token_expires_at),
    )


def _when(at: datetime) -> datetime:
    aware = _aware(at)
    assert aware is not None
    return aware


class SessionRecords:
    """Session reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(self, *, secret_sha256: str, principal: str, kind: str, roles: tuple[str, ...],
            token_name: str | None, created_at: datetime, expires_at: datetime) -> None:
        token_fk = None
        if token_name is not None:
            token_fk = self.connection.execute(
                select(api_token.c.id).where(api_token.c.name == token_name)).scalar()
        self.connection.execute(insert(ui_session).values(
            secret_sha256=secret_sha256, principal=principal, kind=kind,
            roles=",".join(roles), token_fk=token_fk, created_at=created_at,
            last_seen_at=created_at, expires_at=expires_at,
        ))

    def find(self, secret_sha256: str) -> SessionRecord | None:
        """The session with this id's hash, and its token's revocation and expiry."""
        row = self.connection.execute(
            select(ui_session.c.id, ui_session.c.principal, ui_session.c.kind,
                   ui_session.c.roles, ui_session.c.created_at, ui_session.c.last_seen_at,
                   ui_session.c.expires_at, api_token.c.revoked_at,
                   api_token.c.expires_at.label("token_expires_at"))
            .select_from(ui_session.outerjoin(api_token, ui_session.c.token_fk == api_token.c.id))
            .where(ui_session.c.secret_sha256 == secret_sha256)
        ).first()
        return _record(row) if row else None

    def touch(self, session_id: int, at: datetime) -> None:
        self.connection.execute(
            update(ui_session).where(ui_session.c.id == session_id).values(last_seen_at=at))

    def remove(self, secret_sha256: str) -> bool:
        """Delete a session (sign-out); False when there was none."""
        deleted = self.connection.execute(
            delete(ui_session).where(ui_session.c.secret_sha256 == secret_sha256))
        return bool(deleted.rowcount)

    def remove_ended(self, idle_before: datetime, now: datetime) -> int:
        """Delete the sessions idle since before ``idle_before`` or past their end."""
        deleted = self.connection.execute(delete(ui_session).where(
            (ui_session.c.last_seen_at < idle_before) | (ui_session.c.expires_at <= now)))
        return int(deleted.rowcount or 0)
