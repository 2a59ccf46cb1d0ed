"""The QA and administration REST API under ``/api`` (JSON): the review queue, a study's
state, findings and history, accept / reject / correct / merge, the audit trail, routing jobs.

Every answer to a bad request is ``{"error": ...}``: 404 for an unknown study or job, 409 with
the current ``state`` for an action the state does not allow, 400 for a malformed body.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from pacs.api import models
from pacs.api.models import (
    AuditOut,
    CommittedOut,
    CorrectionIn,
    JobOut,
    MergeIn,
    MppsOut,
    RejectIn,
    StudyDetailOut,
    StudyOut,
)
from pacs.http.auth import Who, requires
from pacs.http.context import WebDep
from pacs.services.auth import Role
from pacs.services.errors import NotFound
from pacs.services.workflow import StudyState

router = APIRouter(prefix="/api", tags=["QA and administration"])


@router.get("/qa", summary="The QA queue: quarantined studies with their findings",
            dependencies=[requires(Role.QA)])
def queue(web: WebDep) -> list[StudyOut]:
    return [models.study_out(review) for review in web.workflow.queue()]


@router.get("/studies", summary="Studies in any state (for review), newest first",
            dependencies=[requires(Role.QA)])
def studies(
    web: WebDep,
    patient_name: str | None = None, patient_id: str | None = None,
    date_from: str | None = None, date_to: str | None = None,
    modality: str | None = None, state: StudyState | None = None,
    limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0),
) -> list[StudyOut]:
    return [models.study_out(review) for review in web.workflow.studies(
        states=[state] if state else None, patient_name=patient_name,
        patient_id=patient_id, date_from=date_from, date_to=date_to, modality=modality,
        limit=limit, offset=offset)]


@router.get("/studies/{study}", summary="A study's state, findings, history and jobs",
            dependencies=[requires(Role.QA)])
def study(web: WebDep, study: str) -> StudyDetailOut:
    return models.detail_out(web.workflow.study(study))


@router.post("/studies/{study}/accept", summary="Accept a quarantined study (archive it)",
             dependencies=[requires(Role.QA)])
def accept(web: WebDep, who: Who, study: str) -> StudyDetailOut:
    return models.detail_out(web.workflow.accept(study, who))


@router.post("/studies/{study}/reject", summary="Reject a study, with a reason",
             dependencies=[requires(Role.QA)])
def reject(web: WebDep, who: Who, study: str, body: RejectIn) -> StudyDetailOut:
    return models.detail_out(web.workflow.reject(study, body.reason, who))


@router.patch("/studies/{study}",
              summary="Correct patient/study attributes in the index and the stored files",
              dependencies=[requires(Role.QA)])
def correct(web: WebDep, who: Who, study: str, body: CorrectionIn) -> StudyDetailOut:
    changes = body.model_dump(exclude_unset=True)
    return models.detail_out(web.workflow.correct(study, changes, who))


@router.post("/studies/{study}/correct-from-order",
             summary="Correct the patient attributes to those of the study's worklist order",
             dependencies=[requires(Role.QA)])
def correct_from_order(web: WebDep, who: Who, study: str) -> StudyDetailOut:
    return models.detail_out(web.workflow.correct_from_order(study, who))


@router.post("/studies/{study}/merge", summary="File the study under another patient",
             dependencies=[requires(Role.QA)])
def merge(web: WebDep, who: Who, study: str, body: MergeIn) -> StudyDetailOut:
    return models.detail_out(web.workflow.merge(study, body.PatientID, who,
                                                body.IssuerOfPatientID))


@router.get("/studies/{study}/mpps",
            summary="The study's Modality Performed Procedure Steps (status, times, instances)",
            dependencies=[requires(Role.QA)])
def study_mpps(web: WebDep, study: str) -> list[MppsOut]:
    if web.mpps is None:
        raise NotFound("MPPS is not served here")
    return [MppsOut(sop_instance_uid=m.sop_instance_uid, status=m.status,
                    calling_ae=m.calling_ae, scheduled_step_id=m.step_id, started=m.started,
                    ended=m.ended, created_at=m.created_at, updated_at=m.updated_at,
                    referenced_instances=m.referenced, stored_instances=m.stored)
            for m in web.mpps.of_study(study)]


@router.get("/studies/{study}/commitments",
            summary="The study's instances named in storage commitment requests",
            dependencies=[requires(Role.QA)])
def study_commitments(web: WebDep, study: str) -> list[CommittedOut]:
    if web.commitment is None:
        raise NotFound("storage commitment is not served here")
    return [CommittedOut(sop_instance_uid=c.sop_instance_uid,
                         committed=c.failure_reason is None,
                         failure_reason=c.failure_reason, transaction_uid=c.transaction_uid,
                         calling_ae=c.calling_ae, state=c.state, requested_at=c.requested_at,
                         reported_at=c.reported_at)
            for c in web.commitment.of_study(study)]


@router.get("/audit", summary="The audit trail, newest first",
            dependencies=[requires(Role.QA)])
def audit(web: WebDep, study: str | None = None, action: str | None = None,
          limit: int = Query(default=500, ge=1, le=10000)) -> list[AuditOut]:
    return [models.audit_out(event) for event in web.workflow.audit_events(
        study_instance_uid=study, action=action, limit=limit)]


@router.get("/jobs", summary="Routing jobs, newest first",
            dependencies=[requires(Role.ADMIN)])
def jobs(web: WebDep, study: str | None = None) -> list[JobOut]:
    return [models.job_out(job) for job in web.routing.jobs(study)]


@router.post("/jobs/{job_id}/retry", summary="Run a failed (or done) routing job again",
             dependencies=[requires(Role.ADMIN)])
def retry(web: WebDep, who: Who, job_id: int) -> JobOut:
    return models.job_out(web.routing.retry(job_id, who))
