"""Small reads for the readiness probe and the metrics: does the index answer, how many
studies wait for QA, how many routing jobs are in each state. SQL only; each is one indexed
statement (``study.state`` and ``route_job.state`` are indexed)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from storage.index.jobs import JobState
from storage.index.models import route_job, study

JOB_STATES = (JobState.PENDING, JobState.RUNNING, JobState.DONE, JobState.FAILED)
"""Every state a routing job can be in (``storage.index.jobs.JobState``)."""


class GaugeRecords:
    """Reads on the unit of work's connection (never writes)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def ping(self) -> None:
        """Read one row of the study table: the database answers and the schema is there (a
        table locked against readers, or a database gone, raises or blocks here)."""
        self.connection.execute(select(study.c.id).limit(1)).first()

    def studies_in_state(self, state: str) -> int:
        found = self.connection.execute(
            select(func.count()).select_from(study).where(study.c.state == state)
        ).scalar_one()
        return int(found)

    def jobs_by_state(self) -> dict[str, int]:
        """Routing jobs per state, every known state present (0 when none)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        rows = self.connection.execute(
            select(route_job.c.state, func.count()).where(route_job.c.kind == "route")
            .group_by(route_job.c.state)
        )
        for state, count in rows:
            counts[str(state)] = int(count)
        return counts
