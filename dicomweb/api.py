"""The QA and administration REST API under ``/api`` (JSON): the review queue, a study's
state, findings and history, accept / reject / correct / merge, the audit trail, routing jobs.

Every answer to a bad request is ``{"error": ...}``: 404 for an unknown study or job, 409 with
the current ``state`` for an action the state does not allow, 400 for a malformed body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from dicomweb.context import Web, client_actor
from pacs.services.routing import RoutingService
from pacs.services.workflow import (
    AuditRecord,
    FindingRecord,
    JobRecord,
    StudyReview,
    StudyState,
    WorkflowService,
)


class FindingOut(BaseModel):
    code: str
    severity: str
    message: str
    sop_instance_uid: str | None
    created_at: datetime


class StudyOut(BaseModel):
    study_instance_uid: str
    state: str
    state_changed_at: datetime | None
    rejection_reason: str | None
    stable: bool
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    modalities: list[str]
    series: int
    instances: int
    findings: list[FindingOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    study_instance_uid: str | None
    outcome: str
    detail: dict[str, Any]


class JobOut(BaseModel):
    id: int
    study_instance_uid: str
    destination: str
    rule: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    sent: int
    created_at: datetime
    updated_at: datetime


class StudyDetailOut(StudyOut):
    history: list[AuditOut]
    jobs: list[JobOut]


class RejectIn(BaseModel):
    reason: str = Field(min_length=1, description="why the study is rejected")


class CorrectionIn(BaseModel):
    """The attributes to correct; the ones left out are unchanged (null empties one)."""

    model_config = ConfigDict(extra="forbid")

    PatientName: str | None = None
    PatientID: str | None = None
    PatientBirthDate: str | None = None
    PatientSex: str | None = None
    AccessionNumber: str | None = None
    StudyDescription: str | None = None


class MergeIn(BaseModel):
    PatientID: str = Field(min_length=1, description="the patient to file the study under")
    IssuerOfPatientID: str | None = None


def router(web: Web) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["QA and administration"])
    workflow: WorkflowService | None = web.workflow
    routing: RoutingService | None = web.routing
    if workflow is None or routing is None:
        return api

    @api.get("/qa", summary="The QA queue: quarantined studies with their findings")
    def queue() -> list[StudyOut]:
        return [_study(review) for review in workflow.queue()]

    @api.get("/studies", summary="Studies in any state (for review), newest first")
    def studies(
        patient_name: str | None = None, patient_id: str | None = None,
        date_from: str | None = None, date_to: str | None = None,
        modality: str | None = None, state: StudyState | None = None,
        limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0),
    ) -> list[StudyOut]:
        return [_study(review) for review in workflow.studies(
            states=[state] if state else None, patient_name=patient_name,
            patient_id=patient_id, date_from=date_from, date_to=date_to, modality=modality,
            limit=limit, offset=offset)]

    @api.get("/studies/{study}", summary="A study's state, findings, history and jobs")
    def study(study: str) -> StudyDetailOut:
        return _detail(workflow.study(study))

    @api.post("/studies/{study}/accept", summary="Accept a quarantined study (archive it)")
    def accept(study: str, request: Request) -> StudyDetailOut:
        return _detail(workflow.accept(study, client_actor(request)))

    @api.post("/studies/{study}/reject", summary="Reject a study, with a reason")
    def reject(study: str, body: RejectIn, request: Request) -> StudyDetailOut:
        return _detail(workflow.reject(study, body.reason, client_actor(request)))

    @api.patch("/studies/{study}",
               summary="Correct patient/study attributes in the index and the stored files")
    def correct(study: str, body: CorrectionIn, request: Request) -> StudyDetailOut:
        changes = body.model_dump(exclude_unset=True)
        return _detail(workflow.correct(study, changes, client_actor(request)))

    @api.post("/studies/{study}/merge", summary="File the study under another patient")
    def merge(study: str, body: MergeIn, request: Request) -> StudyDetailOut:
        return _detail(workflow.merge(study, body.PatientID, client_actor(request),
                                      body.IssuerOfPatientID))

    @api.get("/audit", summary="The audit trail, newest first")
    def audit(study: str | None = None, action: str | None = None,
              limit: int = Query(default=500, ge=1, le=10000)) -> list[AuditOut]:
        return [_audit(event) for event in workflow.audit_events(
            study_instance_uid=study, action=action, limit=limit)]

    @api.get("/jobs", summary="Routing jobs, newest first")
    def jobs(study: str | None = None) -> list[JobOut]:
        return [_job(job) for job in routing.jobs(study)]

    @api.post("/jobs/{job_id}/retry", summary="Run a failed (or done) routing job again")
    def retry(job_id: int, request: Request) -> JobOut:
        return _job(routing.retry(job_id, client_actor(request)))

    return api


def _finding(found: FindingRecord) -> FindingOut:
    return FindingOut(code=found.code, severity=found.severity, message=found.message,
                      sop_instance_uid=found.sop_instance_uid, created_at=found.created_at)


def _study(review: StudyReview) -> StudyOut:
    s = review.study
    return StudyOut(
        study_instance_uid=s.study_instance_uid, state=s.state.value,
        state_changed_at=s.state_changed_at, rejection_reason=s.rejection_reason,
        stable=s.stable_at is not None, patient_id=s.patient_id,
        issuer_of_patient_id=s.issuer_of_patient_id, patient_name=s.patient_name,
        patient_birth_date=s.patient_birth_date, patient_sex=s.patient_sex,
        study_date=s.study_date, study_time=s.study_time, accession_number=s.accession_number,
        study_description=s.study_description, modalities=list(s.modalities),
        series=s.series_count, instances=s.instance_count,
        findings=[_finding(f) for f in review.findings],
    )


def _detail(review: StudyReview) -> StudyDetailOut:
    return StudyDetailOut(**_study(review).model_dump(),
                          history=[_audit(e) for e in review.history],
                          jobs=[_job(j) for j in review.jobs])


def _audit(event: AuditRecord) -> AuditOut:
    return AuditOut(id=event.id, at=event.at, actor=event.actor, action=event.action,
                    study_instance_uid=event.study_instance_uid, outcome=event.outcome,
                    detail=event.detail)


def _job(job: JobRecord) -> JobOut:
    return JobOut(id=job.id, study_instance_uid=job.study_instance_uid,
                  destination=job.destination, rule=job.rule, state=job.state,
                  attempts=job.attempts, next_attempt_at=job.next_attempt_at,
                  last_error=job.last_error, sent=job.sent, created_at=job.created_at,
                  updated_at=job.updated_at)
