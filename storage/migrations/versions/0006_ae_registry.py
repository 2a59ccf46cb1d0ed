"""AE registry: ``application_entities``, the remote AEs DIMSE access control knows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00

One row per remote AE title: the addresses it may call from, the DIMSE services it may ask
for, its port when it is a C-MOVE destination, and who registered it (``pacs ae add``, or the
``--peer`` / ``--modality`` flags of ``pacs serve``, which fill it at each start). A new
table: nothing to fill here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "application_entities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("hosts", sa.JSON(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("move_destination", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_application_entities")),
        sa.UniqueConstraint("ae_title", name=op.f("uq_application_entities_ae_title")),
    )


def downgrade() -> None:
    op.drop_table("application_entities")
