"""An index on ``instance.received_at``

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 11:00:00

``pacs serve`` checks the newest instance rows at start (a crash between an index commit and
the sync that makes its blob durable may leave a row whose blob did not reach the disk; the
store was never acknowledged): the newest rows by ``received_at`` are read through this index
instead of a scan of the table.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_instance_received_at"), "instance", ["received_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_instance_received_at"), table_name="instance")
