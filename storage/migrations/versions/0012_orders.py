"""Imaging orders and their scheduled procedure steps: ``imaging_order``, ``procedure_step``

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 17:30:00

Orders come from the RIS (REST or HL7 v2 over MLLP); each scheduled procedure step is one
entry of the Modality Worklist a modality queries by C-FIND.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _pattern_index(table: str, column: str) -> None:
    op.create_index(f"ix_{table}_{column}", table, [column],
                    postgresql_ops={column: "varchar_pattern_ops"})


def upgrade() -> None:
    op.create_table(
        "imaging_order",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False,
                  server_default=""),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_name_norm", sa.String(length=324), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=True),
        sa.Column("requested_procedure_description", sa.String(length=64), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("filler_order_number", sa.String(length=64), nullable=True),
        sa.Column("referring_physician_name", sa.String(length=324), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_imaging_order"),
        sa.UniqueConstraint("study_instance_uid",
                            name="uq_imaging_order_study_instance_uid"),
    )
    for column in ("patient_id", "patient_name_norm", "accession_number"):
        _pattern_index("imaging_order", column)
    op.create_index("ix_imaging_order_status", "imaging_order", ["status"])
    op.create_table(
        "procedure_step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_fk", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(length=16), nullable=False),
        sa.Column("station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("station_name", sa.String(length=16), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("start_date", sa.String(length=8), nullable=True),
        sa.Column("start_time", sa.String(length=16), nullable=True),
        sa.Column("description", sa.String(length=64), nullable=True),
        sa.Column("performing_physician_name", sa.String(length=324), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_fk"], ["imaging_order.id"],
                                name="fk_procedure_step_order_fk_imaging_order",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_procedure_step"),
        sa.UniqueConstraint("order_fk", "step_id", name="uq_procedure_step_order_fk_step_id"),
    )
    op.create_index("ix_procedure_step_order_fk", "procedure_step", ["order_fk"])
    _pattern_index("procedure_step", "station_ae_title")
    op.create_index("ix_procedure_step_modality", "procedure_step", ["modality"])
    op.create_index("ix_procedure_step_start_date", "procedure_step", ["start_date"])
    op.create_index("ix_procedure_step_status", "procedure_step", ["status"])


def downgrade() -> None:
    op.drop_table("procedure_step")
    op.drop_table("imaging_order")
