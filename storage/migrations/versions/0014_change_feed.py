"""The change feed and webhook deliveries: ``change_event``; ``route_job.kind`` (route |
webhook), ``route_job.change_seq`` and ``route_job.webhook``

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 17:30:00

Every change of the archive (an instance stored, a study archived, quarantined, corrected,
rejected, deleted or routed) is a ``change_event`` row written in the change's transaction;
a sequencer numbers the committed rows (``seq``) so that a poller never misses one. Webhook
deliveries of those changes are jobs of the routing job table, of kind ``webhook``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_change_event"),
        sa.UniqueConstraint("seq", name="uq_change_event_seq"),
    )
    op.create_index("ix_change_event_at", "change_event", ["at"])
    op.create_index("ix_change_event_sop_instance_uid", "change_event", ["sop_instance_uid"])
    op.create_index("ix_change_event_unsequenced", "change_event", ["id"],
                    sqlite_where=sa.text("seq IS NULL"), postgresql_where=sa.text("seq IS NULL"))
    with op.batch_alter_table("route_job") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False,
                                   server_default="route"))
        batch.add_column(sa.Column("change_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("webhook", sa.Integer(), nullable=True))
        batch.create_index("ix_route_job_kind", ["kind"])


def downgrade() -> None:
    op.execute("DELETE FROM route_job WHERE kind <> 'route'")
    with op.batch_alter_table("route_job") as batch:
        batch.drop_index("ix_route_job_kind")
        batch.drop_column("webhook")
        batch.drop_column("change_seq")
        batch.drop_column("kind")
    op.drop_index("ix_change_event_unsequenced", table_name="change_event")
    op.drop_index("ix_change_event_sop_instance_uid", table_name="change_event")
    op.drop_index("ix_change_event_at", table_name="change_event")
    op.drop_table("change_event")
