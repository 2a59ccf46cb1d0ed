"""Alembic environment: the engine comes from ``storage.index.migrate`` (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from storage.index.models import metadata

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
