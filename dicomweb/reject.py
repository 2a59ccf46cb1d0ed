"""Rejection from a viewer, as dcm4chee and OHIF do it (IOCM, PS3.3 KOS document titles):
``POST /dicom-web/studies/{s}/series/{se}/reject/113001^DCM`` hides a series from every read
path; ``POST /dicom-web/studies/{s}/reject/{code}`` rejects the whole study (QA state
``rejected``). The code names the reason (PS3.16 CID 7011)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pacs.http.auth import Who, requires
from pacs.http.context import WebDep
from pacs.http.errors import HttpError
from pacs.services.auth import Role

# PS3.16 CID 7011 "Rejected for ..." document titles (code ^ coding scheme)
REASONS = {
    "113001^DCM": "Rejected for Quality Reasons",
    "113037^DCM": "Rejected for Patient Safety Reasons",
    "113038^DCM": "Incorrect Modality Worklist Entry",
    "113039^DCM": "Data Retention Policy Expired",
}


router = APIRouter(tags=["Rejection (IOCM)"], dependencies=[requires(Role.QA)])


@router.post("/studies/{study}/series/{series}/reject/{code}",
             summary="Reject a series from a viewer (e.g. 113001^DCM)")
def reject_series(web: WebDep, who: Who, study: str, series: str, code: str) -> JSONResponse:
    reason = _reason(code)
    review = web.workflow.reject_series(study, series, reason, who)
    return JSONResponse({"StudyInstanceUID": study, "SeriesInstanceUID": series,
                         "reason": reason, "state": review.study.state})


@router.post("/studies/{study}/reject/{code}",
             summary="Reject a study from a viewer (e.g. 113001^DCM)")
def reject_study(web: WebDep, who: Who, study: str, code: str) -> JSONResponse:
    reason = _reason(code)
    review = web.workflow.reject(study, reason, who)
    return JSONResponse({"StudyInstanceUID": study, "reason": reason,
                         "state": review.study.state})


def _reason(code: str) -> str:
    meaning = REASONS.get(code.strip().upper())
    if meaning is None:
        raise HttpError(400, f"rejection code {code!r} is not one of {', '.join(REASONS)}")
    return f"{meaning} ({code})"
