"""MPPS and Storage Commitment records: ``mpps``, ``mpps_instance``, ``storage_commitment``,
``commitment_item``

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 17:30:00

Modality Performed Procedure Steps (PS3.4 F.7) with the instances a final one references, and
Storage Commitment Push Model requests (PS3.4 J.3) with the outcome of each reference.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mpps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("step_fk", sa.Integer(), nullable=True),
        sa.Column("started", sa.String(length=32), nullable=True),
        sa.Column("ended", sa.String(length=32), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("incomplete_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["step_fk"], ["procedure_step.id"],
                                name="fk_mpps_step_fk_procedure_step", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_mpps"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_mpps_sop_instance_uid"),
    )
    op.create_index("ix_mpps_status", "mpps", ["status"])
    op.create_index("ix_mpps_study_instance_uid", "mpps", ["study_instance_uid"])
    op.create_index("ix_mpps_step_fk", "mpps", ["step_fk"])
    op.create_table(
        "mpps_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mpps_fk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["mpps_fk"], ["mpps.id"],
                                name="fk_mpps_instance_mpps_fk_mpps", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_mpps_instance"),
    )
    op.create_index("ix_mpps_instance_mpps_fk", "mpps_instance", ["mpps_fk"])
    op.create_index("ix_mpps_instance_sop_instance_uid", "mpps_instance", ["sop_instance_uid"])
    op.create_table(
        "storage_commitment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_via", sa.String(length=16), nullable=True),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_storage_commitment"),
    )
    op.create_index("ix_storage_commitment_transaction_uid", "storage_commitment",
                    ["transaction_uid"])
    op.create_index("ix_storage_commitment_state", "storage_commitment", ["state"])
    op.create_index("ix_storage_commitment_next_attempt_at", "storage_commitment",
                    ["next_attempt_at"])
    op.create_table(
        "commitment_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commitment_fk", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["commitment_fk"], ["storage_commitment.id"],
                                name="fk_commitment_item_commitment_fk_storage_commitment",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_commitment_item"),
    )
    op.create_index("ix_commitment_item_commitment_fk", "commitment_item", ["commitment_fk"])
    op.create_index("ix_commitment_item_study_instance_uid", "commitment_item",
                    ["study_instance_uid"])


def downgrade() -> None:
    op.drop_table("commitment_item")
    op.drop_table("storage_commitment")
    op.drop_table("mpps_instance")
    op.drop_table("mpps")
