"""The JSON bodies of the QA and administration API (:mod:`pacs.api.routes`,
:mod:`pacs.api.admin`): what it answers (``...Out``) and what it takes (``...In``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from pacs.services.ae_registry import MAX_HOSTS, AeRecord, Service
from pacs.services.auth import MAX_EXPIRES_DAYS, Role, TokenRecord
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


class MppsOut(BaseModel):
    """A Modality Performed Procedure Step of the study (PS3.4 F.7)."""

    sop_instance_uid: str
    status: str  # IN PROGRESS | COMPLETED | DISCONTINUED
    calling_ae: str | None
    scheduled_step_id: str | None
    started: str | None  # PerformedProcedureStepStartDate + Time, as the modality sent them
    ended: str | None
    created_at: datetime
    updated_at: datetime
    referenced_instances: int
    stored_instances: int


class CommittedOut(BaseModel):
    """An instance of the study named in a storage commitment request (PS3.4 J.3)."""

    sop_instance_uid: str
    committed: bool
    failure_reason: int | None  # PS3.3 C.14.1.1 (0x0112: no such object instance, ...)
    transaction_uid: str
    calling_ae: str
    state: str  # of the request's report: pending | reported | failed
    requested_at: datetime
    reported_at: datetime | None


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


class TokenOut(BaseModel):
    """An API token as listed: never its secret nor the secret's hash."""

    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreatedOut(BaseModel):
    """A new token, and its secret: shown this once, never again."""

    token: TokenOut
    secret: str = Field(description="send it as Authorization: Bearer <secret>; keep it now, "
                        "the server keeps only its hash")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64,
                      description="unique (revoked names too), recorded in the audit trail: "
                      "letters, digits, . _ @ -")
    role: Role
    expires_days: int | None = Field(default=None, ge=1, le=MAX_EXPIRES_DAYS,
                                     description="valid for this many days (none: no expiry)")


Host = Annotated[str, Field(min_length=1, max_length=260)]
ServiceName = Annotated[str, Field(min_length=1, max_length=16)]


class AeOut(BaseModel):
    """A registered AE; ``source`` says who made it (``cli``: ``pacs ae`` or this API;
    ``peer-flag``, ``modality-flag``: the flags of ``pacs serve``)."""

    ae_title: str
    hosts: list[str]
    port: int | None
    allow: list[str]
    move_destination: bool
    source: str
    created_at: datetime


class AeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=64,
                          description="the remote AE title (PS3.5: up to 16 characters)")
    hosts: list[Host] = Field(min_length=1, max_length=MAX_HOSTS, description=(
        "addresses it may call from: IP addresses, networks (10.1.2.0/24), names, or * (any "
        "address); the first is where a move destination is reached"))
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="its port (needed for move_destination)")
    allow: list[ServiceName] = Field(
        default=[], max_length=len(Service) * 2,
        description="services it may ask for: store, find, move, get (none: C-ECHO only)")
    move_destination: bool = Field(default=False,
                                   description="a C-MOVE destination and routing target")


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: float | None = Field(
        default=None, ge=0, le=36500, description="purge studies rejected longer ago than "
        "this (default: the server's --retention-days; 0: every rejected study)")


class PurgeOut(BaseModel):
    retention_days: float
    purged: list[str] = Field(description="the purged studies' Study Instance UIDs")


def token_out(record: TokenRecord) -> TokenOut:
    return TokenOut(name=record.name, role=record.role, created_at=record.created_at,
                    expires_at=record.expires_at, last_used_at=record.last_used_at,
                    revoked_at=record.revoked_at)


def ae_out(record: AeRecord) -> AeOut:
    return AeOut(ae_title=record.ae_title, hosts=list(record.hosts), port=record.port,
                 allow=list(record.services), move_destination=record.move_destination,
                 source=record.source, created_at=record.created_at)


def finding_out(found: FindingRecord) -> FindingOut:
    return FindingOut(code=found.code, severity=found.severity, message=found.message,
                      sop_instance_uid=found.sop_instance_uid, created_at=found.created_at)


def study_out(review: StudyReview) -> StudyOut:
    s = review.study
    return StudyOut(
        study_instance_uid=s.study_instance_uid, state=s.state,
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
