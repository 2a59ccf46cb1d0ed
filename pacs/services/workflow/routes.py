"""Routing rules, and the plan of a stable archived study's routing jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.index import Repository
from storage.index.studies import StudyRecord


@dataclass(frozen=True)
class RouteRule:
    """``MODALITY=PEER`` (or ``*=PEER``): archived studies with that modality go to PEER."""

    selector: str
    destination: str

    def matches(self, modalities: Sequence[str]) -> bool:
        return self.selector == "*" or self.selector in modalities

    def __str__(self) -> str:
        return f"{self.selector}={self.destination}"


def plan_routes(repository: Repository, study: StudyRecord, rules: Sequence[RouteRule],
                who: str) -> None:
    """A job per rule the study matches, unless one is open already; each planned job is
    audited. Run by the routing worker (``pacs.services.routing``)."""
    jobs = repository.jobs
    for rule in rules:
        if not rule.matches(study.modalities):
            continue
        if jobs.open_exists(study.study_instance_uid, rule.destination):
            continue
        job_id = jobs.add(study.study_instance_uid, rule.destination, str(rule))
        repository.audit.append(actor=who, action="route", outcome="planned",
                                study_instance_uid=study.study_instance_uid,
                                detail={"job": job_id, "destination": rule.destination,
                                        "rule": str(rule)})
