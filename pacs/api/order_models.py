"""The JSON bodies of the orders API (:mod:`pacs.api.orders`): DICOM keywords exactly, as
PS3.3 names them (C.4.10 Scheduled Procedure Step, C.4.11 Requested Procedure, C.7.1.1
Patient), so that a RIS maps its fields once for REST, C-FIND and HL7 alike.

The ``...In`` models only take the keywords (an unknown one is refused, naming it) and their
JSON types; :mod:`pacs.services.orders` checks each value as DICOM does (VR lengths, dates,
times, code strings) for every front end.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from pacs.services.orders import MAX_STEPS, OrderRecord, StepRecord


class StepIn(BaseModel):
    """A scheduled procedure step; ``ScheduledStationAETitle`` and ``Modality`` are required
    for a new step; ``ScheduledProcedureStepID`` is made when absent."""

    model_config = ConfigDict(extra="forbid")

    ScheduledStationAETitle: str | None = None
    ScheduledStationName: str | None = None
    Modality: str | None = None
    ScheduledProcedureStepStartDate: str | None = Field(default=None, description="YYYYMMDD")
    ScheduledProcedureStepStartTime: str | None = Field(default=None,
                                                        description="HHMMSS[.FFFFFF]")
    ScheduledProcedureStepID: str | None = None
    ScheduledProcedureStepDescription: str | None = None
    ScheduledPerformingPhysicianName: str | None = None
    ScheduledProcedureStepStatus: str | None = Field(
        default=None, description="SCHEDULED (default), ARRIVED, READY, STARTED, DEPARTED, "
        "CANCELED, COMPLETED, DISCONTINUED")


class OrderIn(BaseModel):
    """An order (``POST``: ``PatientID`` and one step at least are required) or the keywords
    to change (``PATCH``: the ones left out stay; null clears an optional one)."""

    model_config = ConfigDict(extra="forbid")

    PatientID: str | None = None
    IssuerOfPatientID: str | None = None
    PatientName: str | None = Field(default=None, description="family^given^middle^prefix^"
                                    "suffix (PS3.5 6.2.1)")
    PatientBirthDate: str | None = Field(default=None, description="YYYYMMDD")
    PatientSex: str | None = Field(default=None, description="M, F or O")
    AccessionNumber: str | None = None
    RequestedProcedureID: str | None = Field(default=None, description="made when absent")
    RequestedProcedureDescription: str | None = None
    StudyInstanceUID: str | None = Field(default=None, description="made when absent")
    ReferringPhysicianName: str | None = None
    PlacerOrderNumberImagingServiceRequest: str | None = None
    FillerOrderNumberImagingServiceRequest: str | None = None
    ScheduledProcedureStepSequence: list[StepIn] | None = Field(
        default=None, max_length=MAX_STEPS, description=(
            f"1 to {MAX_STEPS} steps. PATCH: an item whose ScheduledProcedureStepID the order "
            "has changes that step; any other item is a new step; steps left out stay"))


class StepOut(BaseModel):
    ScheduledProcedureStepID: str
    ScheduledStationAETitle: str | None
    ScheduledStationName: str | None
    Modality: str | None
    ScheduledProcedureStepStartDate: str | None
    ScheduledProcedureStepStartTime: str | None
    ScheduledProcedureStepDescription: str | None
    ScheduledPerformingPhysicianName: str | None
    ScheduledProcedureStepStatus: str


class OrderOut(BaseModel):
    """An order as stored: its id, the keywords, ``status`` (scheduled, cancelled,
    discontinued, ...) and ``source`` (rest, hl7)."""

    id: int
    status: str
    source: str
    created_at: datetime
    updated_at: datetime
    PatientID: str
    IssuerOfPatientID: str | None
    PatientName: str | None
    PatientBirthDate: str | None
    PatientSex: str | None
    AccessionNumber: str | None
    RequestedProcedureID: str | None
    RequestedProcedureDescription: str | None
    StudyInstanceUID: str
    ReferringPhysicianName: str | None
    PlacerOrderNumberImagingServiceRequest: str | None
    FillerOrderNumberImagingServiceRequest: str | None
    ScheduledProcedureStepSequence: list[StepOut]


def step_out(step: StepRecord) -> StepOut:
    return StepOut(
        ScheduledProcedureStepID=step.step_id, ScheduledStationAETitle=step.station_ae_title,
        ScheduledStationName=step.station_name, Modality=step.modality,
        ScheduledProcedureStepStartDate=step.start_date,
        ScheduledProcedureStepStartTime=step.start_time,
        ScheduledProcedureStepDescription=step.description,
        ScheduledPerformingPhysicianName=step.performing_physician_name,
        ScheduledProcedureStepStatus=step.status,
    )


def order_out(order: OrderRecord) -> OrderOut:
    return OrderOut(
        id=order.id, status=order.status, source=order.source, created_at=order.created_at,
        updated_at=order.updated_at, PatientID=order.patient_id,
        IssuerOfPatientID=order.issuer_of_patient_id or None,
        PatientName=order.patient_name, PatientBirthDate=order.patient_birth_date,
        PatientSex=order.patient_sex, AccessionNumber=order.accession_number,
        RequestedProcedureID=order.requested_procedure_id,
        RequestedProcedureDescription=order.requested_procedure_description,
        StudyInstanceUID=order.study_instance_uid,
        ReferringPhysicianName=order.referring_physician_name,
        PlacerOrderNumberImagingServiceRequest=order.placer_order_number,
        FillerOrderNumberImagingServiceRequest=order.filler_order_number,
        ScheduledProcedureStepSequence=[step_out(step) for step in order.steps],
    )
