"""The audit trail read in order, for an exporter: rows after a cursor, with their study's
patient. SQL only; what is sent where lives in ``pacs.services.audit_export``."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection

from storage.index.models import audit_event, patient, study


@dataclass(frozen=True)
class FeedEvent:
    """One audit row, with the patient of its study when the study is still in the index
    (a purged study's patient is not known any more)."""

    id: int
    at: datetime
    actor: str
    action: str
    outcome: str
    study_instance_uid: str | None
    detail: dict[str, Any]
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None


class AuditFeed:
    """Reads of the audit table by id (its primary key: no other index needed)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def newest_id(self) -> int:
        """The id of the newest audit row; 0 when there is none."""
        return int(self.connection.execute(select(func.max(audit_event.c.id))).scalar() or 0)

    def after(self, after_id: int, *, limit: int, also: Collection[int] = ()) -> list[FeedEvent]:
        """Up to ``limit`` rows with an id above ``after_id``, and the rows with an id in
        ``also`` (ids skipped earlier that may have committed since), ordered by id."""
        wanted = audit_event.c.id > after_id
        if also:
            wanted = or_(wanted, audit_event.c.id.in_(sorted(also)))
        statement = (
            select(audit_event, patient.c.patient_id, patient.c.issuer_of_patient_id,
                   patient.c.patient_name)
            .select_from(
                audit_event
                .outerjoin(study, study.c.study_instance_uid == audit_event.c.study_instance_uid)
                .outerjoin(patient, patient.c.id == study.c.patient_fk)
            )
            .where(wanted)
            .order_by(audit_event.c.id)
            .limit(limit + len(also))
        )
        return [
            FeedEvent(
                id=row.id, at=_aware(row.at), actor=row.actor, action=row.action,
                outcome=row.outcome, study_instance_uid=row.study_instance_uid,
                detail=_detail(row.detail), patient_id=row.patient_id,
                issuer_of_patient_id=row.issuer_of_patient_id or None,
                patient_name=row.patient_name,
            )
            for row in self.connection.execute(statement)
        ]


def _aware(at: datetime) -> datetime:
    """SQLite gives back naive datetimes (what was written was UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _detail(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"detail": text}
    return value if isinstance(value, dict) else {"detail": value}
