"""The web UI of the QA gate: server-rendered pages over the same services as ``/api``.

Pages (``GET``): ``/`` (redirects to the study list), ``/ui/studies`` (search), ``/ui/qa``
(the review queue), ``/ui/studies/{study}`` (one study), ``/ui/jobs`` (routing jobs),
``/ui/audit`` (the trail). Actions are plain HTML forms (``POST``) answered by Post/Redirect/Get:
a ``303`` back to the page the form was on, with ``?flash=`` (done) or ``?error=`` (the
service's message for a 404, 409 or 400). No page or action decides anything itself: the
workflow and routing services do, and their transition table says which buttons are shown.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from pacs.http.auth import (
    ANONYMOUS,
    PUBLIC,
    PrincipalDep,
    Who,
    access_of,
    address_of,
    requires,
    session_of,
)
from pacs.http.context import DICOMWEB_PATH, WebDep
from pacs.http.errors import HttpError, status_of
from pacs.services.auth import Principal, Role
from pacs.services.errors import InvalidQuery, NotFound, PacsError
from pacs.services.orders import OrderFilter, OrderStatus
from pacs.services.query import QueryService
from pacs.services.sessions import SessionService
from pacs.services.workflow import (
    TRANSITIONS,
    Action,
    StudyReview,
    StudyState,
    actor,
)
from pacs.services.workflow.review import CORRECTABLE
from storage.attributes import Level
from storage.query import Condition, Query, SingleValue

_HERE = Path(__file__).parent
STATIC_PATH = "/ui/static"
PAGE_SIZE = 100

STATES = {state.value: state for state, _ in TRANSITIONS}
"""The study states by name, as the workflow's transition table names them."""

RETRYABLE_JOBS = frozenset({"failed", "done"})
"""Job states that get a Retry button (the routing service refuses the others with 409)."""

_SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesDescription",
                "NumberOfSeriesRelatedInstances")
_DICOM_DATE = re.compile(r"\d{8}")


def static_files() -> StaticFiles:
    """The UI's stylesheet and script, mounted by ``create_app`` at :data:`STATIC_PATH`."""
    return StaticFiles(directory=_HERE / "static")


@cache
def templates() -> Jinja2Templates:
    """The page templates, loaded once, at the first page asked for."""
    built = Jinja2Templates(directory=_HERE / "templates")
    built.env.filters.update(da=_da, when=_when, compact=_compact, grouped=_grouped)
    built.env.globals.update(
        correctable=tuple(CORRECTABLE), retryable=RETRYABLE_JOBS, states=tuple(STATES),
        allowed=_allowed, dicomweb=DICOMWEB_PATH,
    )
    return built


router = APIRouter(include_in_schema=False)


def _render(request: Request, principal: Principal, name: str,
            build: Callable[[], dict[str, Any]]) -> Response:
    """The page ``name`` with what ``build`` gathered, or the service's error as a page."""
    try:
        context = build()
    except PacsError as error:
        return error_page(request, status_of(error), str(error), principal)
    return templates().TemplateResponse(
        request, name, {**_notice(request), **who_context(request, principal), **context})


def who_context(request: Request, principal: Principal) -> dict[str, Any]:
    """What every page shows of the principal: who is signed in, which actions to offer
    (the routes refuse the others all the same), and the CSRF token its forms carry."""
    session = session_of(request)
    return {"principal": None if principal is ANONYMOUS else principal, "may": principal.may,
            "csrf": SessionService.csrf(session) if session else ""}


async def _act(request: Request, call: Callable[[dict[str, str]], str], back: str) -> Response:
    """Run one action with the posted form, then redirect to ``back`` (or the form's
    ``next``) with ``flash`` (the action's summary) or ``error`` (the service's refusal).
    A form posted from another site never gets here
    (:class:`pacs.http.security.CrossSiteGuard`)."""
    form = {key: value for key, value in (await request.form()).items()
            if isinstance(value, str)}
    refused = csrf_refusal(request, form)
    if refused is not None:
        return refused
    back = local_path(form.get("next")) or back
    try:
        notice = {"flash": await run_in_threadpool(call, form)}
    except PacsError as error:
        notice = {"error": str(error)}
    return RedirectResponse(_with_query(back, notice), status_code=303)


@router.get("/", dependencies=[PUBLIC])
def home() -> RedirectResponse:
    return RedirectResponse("/ui/studies", status_code=303)


@router.get("/ui/studies", response_class=HTMLResponse,
            dependencies=[requires(Role.VIEWER)])
def studies(request: Request, web: WebDep, principal: PrincipalDep, patient_name: str = "",
            patient_id: str = "",
            date_from: str = "", date_to: str = "", modality: str = "", state: str = "",
            page: int = 0) -> Response:
    search = {"patient_name": patient_name.strip(), "patient_id": patient_id.strip(),
              "date_from": date_from.strip(), "date_to": date_to.strip(),
              "modality": modality.strip().upper(), "state": state}

    def build() -> dict[str, Any]:
        if state and state not in STATES:
            raise InvalidQuery(f"state {state!r} is not one of {', '.join(STATES)}")
        states = [STATES[state]] if state else None
        if not principal.may(Role.QA):  # a viewer sees what every read path shows
            states = [StudyState.ARCHIVED] if state in ("", StudyState.ARCHIVED) else []
        reviews = [] if states == [] else web.workflow.studies(
            states=states,
            patient_name=search["patient_name"] or None,
            patient_id=search["patient_id"] or None,
            date_from=_dicom_date("From", search["date_from"]),
            date_to=_dicom_date("To", search["date_to"]),
            modality=search["modality"] or None,
            limit=PAGE_SIZE + 1, offset=max(page, 0) * PAGE_SIZE)
        return {"reviews": reviews[:PAGE_SIZE], "search": search, "page": max(page, 0),
                "more": len(reviews) > PAGE_SIZE, "query": _filled(search)}

    return _render(request, principal, "studies.html", build)


@router.get("/ui/qa", response_class=HTMLResponse, dependencies=[requires(Role.QA)])
def queue(request: Request, web: WebDep, principal: PrincipalDep) -> Response:
    return _render(request, principal, "qa.html", lambda: {"reviews": web.workflow.queue()})


@router.get("/ui/studies/{study}", response_class=HTMLResponse,
            dependencies=[requires(Role.VIEWER)])
def study(request: Request, web: WebDep, principal: PrincipalDep, study: str) -> Response:
    def build() -> dict[str, Any]:
        review = web.workflow.study(study)
        if review.study.state != StudyState.ARCHIVED and not principal.may(Role.QA):
            raise NotFound(f"no study {study}")  # as QIDO-RS and C-FIND answer a viewer
        return {"review": review, "series": _series(web.query, review)}

    return _render(request, principal, "study.html", build)


@router.post("/ui/studies/{study}/accept", dependencies=[requires(Role.QA)])
async def accept(request: Request, web: WebDep, who: Who, study: str) -> Response:
    def call(form: dict[str, str]) -> str:
        review = web.workflow.accept(study, who)
        return f"Accepted {_name(review)}: the study is {review.study.state}."

    return await _act(request, call, f"/ui/studies/{study}")


@router.post("/ui/studies/{study}/reject", dependencies=[requires(Role.QA)])
async def reject(request: Request, web: WebDep, who: Who, study: str) -> Response:
    def call(form: dict[str, str]) -> str:
        review = web.workflow.reject(study, form.get("reason", ""), who)
        return f"Rejected {_name(review)}: {review.study.rejection_reason}."

    return await _act(request, call, f"/ui/studies/{study}")


@router.post("/ui/studies/{study}/correct", dependencies=[requires(Role.QA)])
async def correct(request: Request, web: WebDep, who: Who, study: str) -> Response:
    def call(form: dict[str, str]) -> str:
        review = web.workflow.correct(study, _changes(form), who)
        open_findings = len(review.findings)
        return (f"Corrected {_name(review)}: the study is {review.study.state}, "
                f"{open_findings} open finding{'' if open_findings == 1 else 's'}.")

    return await _act(request, call, f"/ui/studies/{study}")


@router.post("/ui/studies/{study}/correct-from-order", dependencies=[requires(Role.QA)])
async def correct_from_order(request: Request, web: WebDep, who: Who, study: str) -> Response:
    def call(form: dict[str, str]) -> str:
        review = web.workflow.correct_from_order(study, who)
        return (f"Corrected {_name(review)} from its order: the study is "
                f"{review.study.state}.")

    return await _act(request, call, f"/ui/studies/{study}")


@router.get("/ui/worklist", response_class=HTMLResponse, dependencies=[requires(Role.QA)])
def worklist(request: Request, web: WebDep, principal: PrincipalDep, patient: str = "",
             accession: str = "", status: str = "", date: str = "") -> Response:
    search = {"patient": patient.strip(), "accession": accession.strip(),
              "status": status.strip(), "date": date.strip()}

    def build() -> dict[str, Any]:
        if web.orders is None:
            raise NotFound("orders are not served here")
        criteria = OrderFilter(status=search["status"] or None,
                               patient_id=search["patient"] or None,
                               accession_number=search["accession"] or None,
                               date_from=search["date"] or None, date_to=search["date"] or None,
                               limit=200)
        return {"orders": web.orders.with_studies(criteria), "search": search,
                "statuses": [s.value for s in OrderStatus]}

    return _render(request, principal, "worklist.html", build)


@router.get("/ui/jobs", response_class=HTMLResponse, dependencies=[requires(Role.ADMIN)])
def jobs(request: Request, web: WebDep, principal: PrincipalDep, study: str = "") -> Response:
    return _render(request, principal, "jobs.html",
                   lambda: {"jobs": web.routing.jobs(study.strip() or None),
                            "study": study.strip()})


@router.post("/ui/jobs/{job_id}/retry", dependencies=[requires(Role.ADMIN)])
async def retry(request: Request, web: WebDep, who: Who, job_id: int) -> Response:
    def call(form: dict[str, str]) -> str:
        job = web.routing.retry(job_id, who)
        return f"Job {job.id} to {job.destination} will run again ({job.state})."

    return await _act(request, call, "/ui/jobs")


@router.get("/ui/audit", response_class=HTMLResponse, dependencies=[requires(Role.QA)])
def audit(request: Request, web: WebDep, principal: PrincipalDep, study: str = "",
          action: str = "") -> Response:
    return _render(request, principal, "audit.html", lambda: {
        "events": web.workflow.audit_events(study_instance_uid=study.strip() or None,
                                            action=action.strip() or None),
        "study": study.strip(), "action": action.strip()})


def _series(query: QueryService, review: StudyReview) -> list[dict[str, Any]]:
    """The study's series from the archive (QIDO's query at SERIES level); none unless the
    study is archived, since other states are invisible to every read path by design."""
    if review.study.state != "archived":
        return []
    found = query.search(Query(
        level=Level.SERIES, return_keys=_SERIES_KEYS,
        conditions=(Condition("StudyInstanceUID",
                              SingleValue(review.study.study_instance_uid)),),
    ), capped=False)
    return sorted(found.rows, key=lambda row: (row.get("SeriesNumber") is None,
                                               row.get("SeriesNumber") or 0))


def _changes(form: Mapping[str, str]) -> dict[str, str | None]:
    """The attributes to write into the study's files: every filled field, even one left as
    it was (the form shows the index's values, which are the *patient's*: a study quarantined
    for a patient mismatch has other values in its files), and a field emptied by the user
    (filled with ``was-<Keyword>``). A field empty before and after is left alone."""
    changes: dict[str, str | None] = {}
    for keyword in CORRECTABLE:
        value = form.get(keyword, "").strip()
        if value or form.get(f"was-{keyword}", "").strip():
            changes[keyword] = value or None
    return changes


def _dicom_date(label: str, value: str) -> str | None:
    """``YYYYMMDD`` from a date field (``YYYY-MM-DD`` from ``<input type=date>``, or typed)."""
    if not value:
        return None
    digits = value.replace("-", "")
    if not _DICOM_DATE.fullmatch(digits):
        raise InvalidQuery(f"{label} date {value!r} is not YYYYMMDD or YYYY-MM-DD")
    return digits


def _allowed(state: str, action: str) -> bool:
    """Whether the transition table lets a study in ``state`` take ``action``."""
    return (state, Action(action)) in TRANSITIONS


def _name(review: StudyReview) -> str:
    s = review.study
    return f"{s.patient_name or '(no name)'} ({s.patient_id}, study {s.study_instance_uid})"


def _notice(request: Request) -> dict[str, str]:
    return {key: request.query_params.get(key, "")[:500] for key in ("flash", "error")}


def error_page(request: Request, status: int, message: str, principal: Principal | None
               ) -> Response:
    who = who_context(request, principal) if principal is not None else {}
    return templates().TemplateResponse(
        request, "error.html", {"status": status, "message": message, "flash": "", "error": "",
                                **who},
        status_code=status)


def error_answer(request: Request, error: HttpError) -> Response | None:
    """A refusal on a UI page (e.g. 403: a page the role does not include) as a page of its
    own, with the same status and headers; None for anything else (a redirect, other paths)."""
    path = request.url.path
    if error.status < 400 or not (path == "/ui" or path.startswith("/ui/")):
        return None
    answer = error_page(request, error.status, error.message, None)
    answer.headers.update(error.headers)
    return answer


def csrf_refusal(request: Request, form: Mapping[str, str]) -> Response | None:
    """The answer to a form posted with a session cookie but without its session's CSRF
    token (403, counted in the audit trail); None when the form may be acted on. A request
    authenticated otherwise (a bearer token, or no authentication) carries no ambient
    credential a page on another site could borrow: the cross-site guard is enough."""
    session = session_of(request)
    if session is None or SessionService.csrf_matches(session, form.get("csrf")):
        return None
    access = access_of(request)
    if access.refusals is not None:
        access.refusals(who=actor("http", address=address_of(request)),
                        action="http-refused", reason="403 CSRF token missing or wrong",
                        detail={"method": request.method, "path": request.url.path[:200]})
    return error_page(request, 403, "This form is out of date or did not come from this "
                      "site's pages: reload the page and send it again.", None)


def local_path(target: str | None) -> str | None:
    """``target`` when it is a path on this server (never another site: no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _with_query(path: str, notice: Mapping[str, str]) -> str:
    """``path`` with the notice in its query, in place of an earlier one."""
    base, _, query = path.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query) if k not in ("flash", "error")]
    return f"{base}?{urlencode([*kept, *notice.items()])}"


def _filled(params: Mapping[str, str]) -> str:
    """The query string of the filled search fields (for the page links)."""
    return urlencode({k: v for k, v in params.items() if v})


def _da(value: str | None) -> str:
    """A DICOM date (DA, ``YYYYMMDD``) as ``YYYY-MM-DD`` (other text unchanged)."""
    if value and _DICOM_DATE.fullmatch(value):
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.tzinfo else "")


def _grouped(findings: Sequence[Any]) -> list[tuple[Any, int]]:
    """Findings with the same code, severity and message once, with how many instances have
    them (a check runs per instance: a 300-image series would list one finding 300 times)."""
    counts: dict[tuple[str, str, str], list[Any]] = {}
    for found in findings:
        counts.setdefault((found.code, found.severity, found.message), []).append(found)
    return [(same[0], len(same)) for same in counts.values()]


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
