"""API tokens: ``api_token``, the hashed secrets of HTTP clients and their roles

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 03:30:00

One row per token made by ``pacs token create``: its unique name, the non-secret lookup id
the token carries, the role, the SHA-256 of the secret (the secret itself is never stored),
when it was made, expires, was last used and was revoked. A new table: nothing to fill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("lookup_id", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("lookup_id", name=op.f("uq_api_token_lookup_id")),
        sa.UniqueConstraint("name", name=op.f("uq_api_token_name")),
    )


def downgrade() -> None:
    op.drop_table("api_token")
