"""query indexes: DT match form in UTC, pattern operator classes on PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:00:00

- ``instance.acquisition_date_time_utc`` (indexed): AcquisitionDateTime shifted to UTC, so DT
  range matching compares values sent with different UTC offsets; filled for existing rows.
- PostgreSQL: the indexes of text columns matched by wildcard are rebuilt with
  ``varchar_pattern_ops`` so that ``LIKE 'abc%'`` uses them under any collation (a plain
  b-tree serves a prefix only under the C collation). SQLite needs no change: the index uses
  ``PRAGMA case_sensitive_like=ON`` with the default BINARY collation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.temporal import datetime_utc

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PATTERN_INDEXES = (
    ("patient", "ethnic_group"),
    ("patient", "patient_id"),
    ("patient", "patient_name"),
    ("patient", "patient_name_norm"),
    ("patient", "patient_sex"),
    ("study", "accession_number"),
    ("study", "admitting_diagnoses_description"),
    ("study", "institution_name"),
    ("study", "name_of_physicians_reading_study"),
    ("study", "name_of_physicians_reading_study_norm"),
    ("study", "occupation"),
    ("study", "referring_physician_name"),
    ("study", "referring_physician_name_norm"),
    ("study", "study_description"),
    ("study", "study_id"),
    ("study", "timezone_offset_from_utc"),
    ("series", "body_part_examined"),
    ("series", "manufacturer"),
    ("series", "modality"),
    ("series", "protocol_name"),
    ("series", "series_description"),
    ("series", "station_name"),
    ("request_attribute", "requested_procedure_id"),
    ("request_attribute", "scheduled_procedure_step_id"),
)


def upgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("acquisition_date_time_utc", sa.String(length=26), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_instance_acquisition_date_time_utc"),
            ["acquisition_date_time_utc"],
            unique=False,
        )
    _fill_acquisition_date_time_utc()
    if op.get_bind().dialect.name == "postgresql":
        for table, column in PATTERN_INDEXES:
            name = f"ix_{table}_{column}"
            op.drop_index(name, table_name=table)
            op.create_index(
                name, table, [column], postgresql_ops={column: "varchar_pattern_ops"}
            )


def _fill_acquisition_date_time_utc() -> None:
    bind = op.get_bind()
    instance = sa.table(
        "instance",
        sa.column("id", sa.Integer),
        sa.column("acquisition_date_time", sa.String),
        sa.column("acquisition_date_time_utc", sa.String),
    )
    rows = bind.execute(
        sa.select(instance.c.id, instance.c.acquisition_date_time).where(
            instance.c.acquisition_date_time.is_not(None)
        )
    ).all()
    updates = [{"row_id": row.id, "utc": datetime_utc(row.acquisition_date_time)} for row in rows]
    if updates:
        bind.execute(
            sa.update(instance)
            .where(instance.c.id == sa.bindparam("row_id"))
            .values(acquisition_date_time_utc=sa.bindparam("utc")),
            updates,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in PATTERN_INDEXES:
            name = f"ix_{table}_{column}"
            op.drop_index(name, table_name=table)
            op.create_index(name, table, [column])
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_acquisition_date_time_utc"))
        batch_op.drop_column("acquisition_date_time_utc")
