"""Index records of OpenID Connect sign-ins under way. SQL only; the rules (what is made,
how long it lasts, what the callback checks) live in ``pacs.services.oidc_sign_in``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from storage.index.models import ui_sign_in
from storage.index.tokens import _aware


@dataclass(frozen=True)
class PendingSignIn:
    """A sign-in started at the identity provider, as the index holds it."""

    nonce: str
    code_challenge: str
    redirect_uri: str
    next_path: str


class SignInRecords:
    """Pending sign-in reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(self, *, state_sha256: str, pending: PendingSignIn, created_at: datetime,
            expires_at: datetime) -> None:
        self.connection.execute(insert(ui_sign_in).values(
            state_sha256=state_sha256, nonce=pending.nonce,
            code_challenge=pending.code_challenge, redirect_uri=pending.redirect_uri,
            next_path=pending.next_path, created_at=created_at, expires_at=expires_at,
        ))

    def take(self, state_sha256: str, now: datetime) -> PendingSignIn | None:
        """Delete the sign-in with this state's hash and give it back, unless it has ended
        (deleted all the same). One statement, so of two callbacks with the same state, on
        any servers, only one gets it."""
        row = self.connection.execute(
            delete(ui_sign_in).where(ui_sign_in.c.state_sha256 == state_sha256).returning(
                ui_sign_in.c.nonce, ui_sign_in.c.code_challenge, ui_sign_in.c.redirect_uri,
                ui_sign_in.c.next_path, ui_sign_in.c.expires_at)
        ).first()
        if row is None:
            return None
        expires_at = _aware(row.expires_at)
        if expires_at is None or expires_at <= now:
            return None
        return PendingSignIn(nonce=row.nonce, code_challenge=row.code_challenge,
                             redirect_uri=row.redirect_uri, next_path=row.next_path)

    def remove_ended(self, now: datetime) -> int:
        """Delete the sign-ins whose time is up (their browser never came back)."""
        deleted = self.connection.execute(
            delete(ui_sign_in).where(ui_sign_in.c.expires_at <= now))
        return int(deleted.rowcount or 0)

    def count(self) -> int:
        return int(self.connection.execute(select(func.count()).select_from(ui_sign_in))
                   .scalar_one())
