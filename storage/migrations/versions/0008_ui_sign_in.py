"""OpenID Connect sign-ins under way: ``ui_sign_in``

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09 05:00:00

One row per sign-in started at the identity provider and not yet come back (a few minutes at
most): the SHA-256 of its ``state``, its ``nonce``, its PKCE code challenge, the redirect URI
and the page to go on to. A new table: nothing to fill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sign_in",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state_sha256", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("code_challenge", sa.String(length=64), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2000), nullable=False),
        sa.Column("next_path", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ui_sign_in")),
        sa.UniqueConstraint("state_sha256", name=op.f("uq_ui_sign_in_state_sha256")),
    )
    op.create_index(op.f("ix_ui_sign_in_expires_at"), "ui_sign_in", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_sign_in_expires_at"), table_name="ui_sign_in")
    op.drop_table("ui_sign_in")
