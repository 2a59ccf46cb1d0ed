"""instance indexes: one index of the series and its image-level keys, instead of ten

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 08:00:00

Every store updated an index per image-level attribute (Instance Number, Content Date and
Time, Acquisition DateTime and its UTC form, Number of Frames, Rows, Columns, Bits Allocated)
besides the one of ``series_fk``. Those attributes are matched within a series (C-FIND below
SERIES level names its series, as do a viewer's QIDO-RS queries), so one index leading with
``series_fk`` and carrying them all (``ix_instance_series_keys``) serves those matches from
the index alone, and a store updates one index instead of ten. ``sop_class_uid`` keeps its
own index (queries by SOP class across studies).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SERIES_KEYS = (
    "series_fk", "instance_number", "content_date", "content_time", "acquisition_date_time",
    "acquisition_date_time_utc", "number_of_frames", "rows", "columns", "bits_allocated",
)
DROPPED = SERIES_KEYS  # each had an index of its own: ix_instance_<column>


def upgrade() -> None:
    op.create_index("ix_instance_series_keys", "instance", list(SERIES_KEYS), unique=False)
    existing = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("instance")}
    for column in DROPPED:
        name = f"ix_instance_{column}"
        if name in existing:
            op.drop_index(name, table_name="instance")


def downgrade() -> None:
    for column in DROPPED:
        op.create_index(f"ix_instance_{column}", "instance", [column], unique=False)
    op.drop_index("ix_instance_series_keys", table_name="instance")
