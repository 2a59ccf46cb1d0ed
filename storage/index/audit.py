"""Index records of the audit trail: append-only events of who did what to which study, and
how it ended. SQL only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from storage.index.models import audit_event, utc_now


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    study_instance_uid: str | None
    outcome: str
    detail: dict[str, Any]



class AuditRecords:
    """Audit events on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def append(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        study_instance_uid: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.connection.execute(_AUDIT_INSERT, {
            "at": utc_now(), "actor": actor[:200], "action": action, "outcome": outcome[:120],
            "study_instance_uid": study_instance_uid,
            "detail": json.dumps(detail, ensure_ascii=False, default=str) if detail else None,
        })

    def append_many(self, events: Iterable[dict[str, Any]]) -> int:
        """Append several audit events in one statement (the batched query audit); each is
        a dict of :meth:`append`'s keyword arguments, with ``at`` when it happened."""
        rows = [{
            "at": event.get("at") or utc_now(), "actor": str(event["actor"])[:200],
            "action": str(event["action"])[:32], "outcome": str(event["outcome"])[:120],
            "study_instance_uid": event.get("study_instance_uid"),
            "detail": (json.dumps(event["detail"], ensure_ascii=False, default=str)
                       if event.get("detail") else None),
        } for event in events]
        if rows:
            self.connection.execute(_AUDIT_INSERT, rows)
        return len(rows)

    def events(
        self, *, study_instance_uid: str | None = None, action: str | None = None,
        limit: int = 500,
    ) -> list[AuditRecord]:
        statement = select(audit_event).order_by(audit_event.c.id.desc()).limit(limit)
        if study_instance_uid:
            statement = statement.where(audit_event.c.study_instance_uid == study_instance_uid)
        if action:
            statement = statement.where(audit_event.c.action == action)
        return [
            AuditRecord(r.id, r.at, r.actor, r.action, r.study_instance_uid, r.outcome,
                        json.loads(r.detail) if r.detail else {})
            for r in self.connection.execute(statement)
        ]



_AUDIT_INSERT = insert(audit_event)  # built once: one runs for every stored instance
