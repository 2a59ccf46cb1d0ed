"""Leases on routing jobs: ``route_job.lease_owner`` and ``route_job.lease_expires_at``

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 11:10:00

Several servers on one PostgreSQL claim routing jobs with ``FOR UPDATE SKIP LOCKED``; the
claimer records itself and a lease it renews while it sends, so that a job left running by a
server that died is claimed again once the lease runs out, and never while its server lives.
Existing rows get no lease (a running one is resumed at the next start, as before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("route_job") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("route_job") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
