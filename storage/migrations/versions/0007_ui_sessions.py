"""Web UI sessions: ``ui_session``, the signed-in browsers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:00:00

One row per signed-in browser: the SHA-256 of the random session id its cookie carries (the
id itself is never stored), who signed in (a token's name or an OIDC subject) with which
roles, the API token signed in with (revoking it ends its sessions; deleting it, never done,
would delete them), when it was last used and when it ends at the latest. A new table:
nothing to fill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("roles", sa.String(length=64), nullable=False),
        sa.Column("token_fk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_fk"], ["api_token.id"],
                                name=op.f("fk_ui_session_token_fk_api_token"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ui_session")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_ui_session_secret_sha256")),
    )
    op.create_index(op.f("ix_ui_session_expires_at"), "ui_session", ["expires_at"])
    op.create_index(op.f("ix_ui_session_token_fk"), "ui_session", ["token_fk"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_session_token_fk"), table_name="ui_session")
    op.drop_index(op.f("ix_ui_session_expires_at"), table_name="ui_session")
    op.drop_table("ui_session")
