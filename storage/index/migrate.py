"""Alembic, configured in code (no alembic.ini): upgrade and the pending-diff check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Engine

from storage.index.models import metadata

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


# pg_advisory_lock key of the schema upgrade: several servers starting at once on one
# PostgreSQL upgrade one after the other (the later ones find the schema at head already)
UPGRADE_LOCK = 0x7061_6373_5F75_7067  # "pacs_upg"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; on PostgreSQL under an advisory lock, held by a
    connection of its own for the whole upgrade, so that concurrent starts wait their turn."""
    if engine.dialect.name != "postgresql":
        command.upgrade(alembic_config(engine), revision)
        return
    with engine.connect() as holder:
        holder = holder.execution_options(isolation_level="AUTOCOMMIT")
        if not holder.execute(text("SELECT pg_try_advisory_lock(:key)"),
                              {"key": UPGRADE_LOCK}).scalar():
            log.info("another server is upgrading the index schema: waiting for it")
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": UPGRADE_LOCK})
        try:
            command.upgrade(alembic_config(engine), revision)
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": UPGRADE_LOCK})


def pending_changes(engine: Engine) -> list[Any]:
    """What autogenerate would still emit against this database (empty when in sync)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))
