"""Index records of QA findings: the open findings of each study (cleared when it is accepted
or re-checked clean). SQL only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from storage.index.models import finding, study, utc_now


@dataclass(frozen=True)
class FindingRecord:
    code: str
    severity: str
    message: str
    sop_instance_uid: str | None
    created_at: datetime




class FindingRecords:
    """Findings on the unit of work's connection (never commits)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def add(
        self, study_instance_uid: str, found: Iterable[tuple[str, str, str, str | None]]
    ) -> None:
        """(code, severity, message, SOP Instance UID) per finding."""
        rows = [{"code": code, "severity": severity, "message": message,
                 "sop_instance_uid": sop, "created_at": utc_now()}
                for code, severity, message, sop in found]
        if not rows:
            return
        study_id = self._study_id(study_instance_uid)
        if study_id is None:
            return
        self.connection.execute(insert(finding), [{**row, "study_fk": study_id} for row in rows])

    def clear(self, study_instance_uid: str) -> int:
        study_id = self._study_id(study_instance_uid)
        if study_id is None:
            return 0
        return int(self.connection.execute(
            delete(finding).where(finding.c.study_fk == study_id)).rowcount)

    def has(self, study_instance_uid: str, codes: Iterable[str]) -> bool:
        return bool(self.connection.execute(
            select(func.count()).select_from(finding.join(study, finding.c.study_fk == study.c.id))
            .where(study.c.study_instance_uid == study_instance_uid,
                   finding.c.code.in_(list(codes)))).scalar_one())

    def of_study(self, study_instance_uid: str) -> list[FindingRecord]:
        rows = self.connection.execute(
            select(finding).join(study, finding.c.study_fk == study.c.id)
            .where(study.c.study_instance_uid == study_instance_uid).order_by(finding.c.id)
        )
        return [FindingRecord(r.code, r.severity, r.message, r.sop_instance_uid, r.created_at)
                for r in rows]

    def of_studies(self, study_uids: list[str]) -> dict[str, list[FindingRecord]]:
        if not study_uids:
            return {}
        rows = self.connection.execute(
            select(finding, study.c.study_instance_uid)
            .join(study, finding.c.study_fk == study.c.id)
            .where(study.c.study_instance_uid.in_(study_uids)).order_by(finding.c.id)
        )
        found: dict[str, list[FindingRecord]] = {}
        for r in rows:
            found.setdefault(r.study_instance_uid, []).append(
                FindingRecord(r.code, r.severity, r.message, r.sop_instance_uid, r.created_at))
        return found


    def _study_id(self, study_instance_uid: str) -> int | None:
        found = self.connection.execute(
            select(study.c.id).where(study.c.study_instance_uid == study_instance_uid)
        ).scalar()
        return int(found) if found is not None else None
