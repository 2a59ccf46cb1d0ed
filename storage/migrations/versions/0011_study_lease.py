"""Leases on studies' background work: ``study.lease_owner`` and ``study.lease_expires_at``

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 09:00:00

A study's stability check (the pixel check, then the routing plan) and its purge are claimed
by one server at a time, as routing jobs are (0010): ``FOR NO KEY UPDATE SKIP LOCKED`` on
PostgreSQL, then this server's lease on the row, renewed while it works. The work of a server
that died is claimed again once its lease ran out, never while its server lives. Existing rows
get no lease (free to claim).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
