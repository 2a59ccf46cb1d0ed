"""The JSON bodies of the QA and administration API (:mod:`pacs.api.routes`): what it
answers (``...Out``) and what it takes (``...In``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pacs.services.workflow import AuditRecord, FindingRecord, JobRecord, StudyReview


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


def finding_out(found: FindingRecord) -> FindingOut:
    return FindingOut(code=found.code, severity=found.severity, message=found.message,
                      sop_instance_uid=found.sop_instance_uid, created_at=found.created_at)


def study_out(review: StudyReview) -> StudyOut:
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
        findings=[finding_out(f) for f in review.findings],
    )


def detail_out(review: StudyReview) -> StudyDetailOut:
    return StudyDetailOut(**study_out(review).model_dump(),
                          history=[audit_out(e) for e in review.history],
                          jobs=[job_out(j) for j in review.jobs])


def audit_out(event: AuditRecord) -> AuditOut:
    return AuditOut(id=event.id, at=event.at, actor=event.actor, action=event.action,
                    study_instance_uid=event.study_instance_uid, outcome=event.outcome,
                    detail=event.detail)


def job_out(job: JobRecord) -> JobOut:
    return JobOut(id=job.id, study_instance_uid=job.study_instance_uid,
                  destination=job.destination, rule=job.rule, state=job.state,
                  attempts=job.attempts, next_attempt_at=job.next_attempt_at,
                  last_error=job.last_error, sent=job.sent, created_at=job.created_at,
                  updated_at=job.updated_at)
