"""Index records of the AE registry. SQL only; the rules (what a valid title, host or service
is, what the ``--peer`` and ``--modality`` flags make, how lookups are cached) live in
``pacs.services.ae_registry``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from storage.index.models import application_entities as table


@dataclass(frozen=True)
class AeRecord:
    """One registered remote AE, as stored."""

    ae_title: str
    hosts: tuple[str, ...]  # IP addresses, networks or names; ("*",): any address
    port: int | None
    services: tuple[str, ...]
    move_destination: bool
    source: str
    created_at: datetime


def _record(row: Any) -> AeRecord:
    created = row.created_at
    if created.tzinfo is None:  # SQLite gives back naive datetimes (what was written was UTC)
        created = created.replace(tzinfo=UTC)
    return AeRecord(
        ae_title=row.ae_title, hosts=tuple(row.hosts or ()), port=row.port,
        services=tuple(row.services or ()), move_destination=bool(row.move_destination),
        source=row.source, created_at=created,
    )


class AeRecords:
    """AE registry reads and writes on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(self, *, ae_title: str, hosts: Sequence[str], port: int | None,
            services: Sequence[str], move_destination: bool, source: str,
            created_at: datetime) -> AeRecord:
        """Insert an entry; the title is unique (a second one raises ``IndexDataError`` when
        the unit of work ends)."""
        self.connection.execute(insert(table).values(
            ae_title=ae_title, hosts=list(hosts), port=port, services=list(services),
            move_destination=move_destination, source=source, created_at=created_at,
        ))
        found = self.by_title(ae_title)
        assert found is not None
        return found

    def replace(self, *, ae_title: str, hosts: Sequence[str], port: int | None,
                services: Sequence[str], move_destination: bool, source: str) -> bool:
        """Rewrite an entry's fields (its creation time stays); False when there is none."""
        result = self.connection.execute(
            update(table).where(table.c.ae_title == ae_title).values(
                hosts=list(hosts), port=port, services=list(services),
                move_destination=move_destination, source=source,
            )
        )
        return bool(result.rowcount)

    def by_title(self, ae_title: str) -> AeRecord | None:
        row = self.connection.execute(select(table).where(table.c.ae_title == ae_title)).first()
        return _record(row) if row else None

    def all(self) -> list[AeRecord]:
        return [_record(row) for row in
                self.connection.execute(select(table).order_by(table.c.ae_title))]

    def remove(self, ae_title: str) -> bool:
        """Delete an entry; False when no entry has that title."""
        result = self.connection.execute(delete(table).where(table.c.ae_title == ae_title))
        return bool(result.rowcount)
