"""QIDO-RS (PS3.18 10.6): search for studies, series and instances as DICOM JSON.

No match answers ``200`` with ``[]`` (as Orthanc does; PS3.18 allows 200 or 204, and one
answer is easier on clients). Ignored parameters are named in ``Warning: 299`` headers
(PS3.18 10.6.1.2), and a result cut short by the server's cap gets the standard warning text.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomweb import dicom_json
from dicomweb.query_params import FORMATTED, Resource, check_uid, parse
from dicomweb.urls import base_url
from pacs.http.auth import Who, requires
from pacs.http.context import Web, WebDep
from pacs.http.errors import HttpError
from pacs.services.auth import Role
from pacs.services.errors import PacsError
from storage.attributes import Level

MEDIA_TYPE = "application/dicom+json"
_ACCEPTABLE = ("application/dicom+json", "application/json", "*/*", "application/*")
_CAPPED_TEXT = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)
_DOC = {
    200: {"description": "Matches as a DICOM JSON array (PS3.18 Annex F); `[]` for none.",
          "content": {MEDIA_TYPE: {}}},
    400: {"description": "A malformed value of a supported parameter."},
    406: {"description": "The Accept header names no JSON media type."},
}


router = APIRouter(tags=["QIDO-RS"], dependencies=[requires(Role.VIEWER)])


def _search(web: Web, request: Request, who: str, resource: Resource, **path: str) -> Response:
    _check_accept(request)
    try:
        for name, uid in path.items():
            check_uid(name, uid)
        qido = parse(resource, request.query_params.multi_items(), path=path,
                     fuzzy_default=web.options.fuzzy_person_names)
    except (PacsError, HttpError) as error:  # refused before it became a query
        web.query.refused(who=who, how="QIDO-RS", reason=str(error))
        raise
    result = web.query.search(qido.query, capped=qido.capped, who=who)  # audited there
    root = base_url(request)
    level = resource.level
    body = [dicom_json.dataset(_answer(row, qido.returned, level, root))
            for row in result.rows]
    warnings = list(qido.warnings)
    if result.capped:
        warnings.append(_CAPPED_TEXT)
    headers = {}
    if warnings:
        agent = request.url.netloc or "pacs"
        headers["Warning"] = ", ".join(
            f'299 {agent} "{text.replace(chr(34), chr(39))}"' for text in warnings
        )
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                    media_type=MEDIA_TYPE, headers=headers)


@router.get("/studies", summary="Search for studies", responses=_DOC)  # type: ignore[arg-type]
def studies(request: Request, web: WebDep, who: Who) -> Response:
    return _search(web, request, who, Resource.STUDIES)


@router.get("/series", summary="Search for series in every study",
            responses=_DOC)  # type: ignore[arg-type]
def all_series(request: Request, web: WebDep, who: Who) -> Response:
    return _search(web, request, who, Resource.SERIES)


@router.get("/instances", summary="Search for instances in every study",
            responses=_DOC)  # type: ignore[arg-type]
def all_instances(request: Request, web: WebDep, who: Who) -> Response:
    return _search(web, request, who, Resource.INSTANCES)


@router.get("/studies/{study}/series", summary="Search for the series of a study",
            responses=_DOC)  # type: ignore[arg-type]
def study_series(request: Request, web: WebDep, who: Who, study: str) -> Response:
    return _search(web, request, who, Resource.STUDY_SERIES, StudyInstanceUID=study)


@router.get("/studies/{study}/instances", summary="Search for the instances of a study",
            responses=_DOC)  # type: ignore[arg-type]
def study_instances(request: Request, web: WebDep, who: Who, study: str) -> Response:
    return _search(web, request, who, Resource.STUDY_INSTANCES, StudyInstanceUID=study)


@router.get("/studies/{study}/series/{series}/instances",
            summary="Search for the instances of a series",
            responses=_DOC)  # type: ignore[arg-type]
def series_instances(request: Request, web: WebDep, who: Who, study: str,
                     series: str) -> Response:
    return _search(web, request, who, Resource.SERIES_INSTANCES, StudyInstanceUID=study,
                   SeriesInstanceUID=series)


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    types = [item.split(";")[0].strip().lower() for item in accept.split(",")]
    if not any(media in _ACCEPTABLE for media in types):
        raise HttpError(406, f"QIDO-RS answers {MEDIA_TYPE}; Accept {accept!r} excludes it")


def _answer(
    row: dict[str, Any], returned: tuple[str, ...], level: Level, root: str
) -> dict[str, Any]:
    values = {key: row.get(key) for key in returned if key not in FORMATTED}
    for key, value in row.items():
        if value is not None:
            values.setdefault(key, value)
    if "InstanceAvailability" in returned:
        values["InstanceAvailability"] = "ONLINE"
    if "RetrieveURL" in returned:
        values["RetrieveURL"] = _retrieve_url(row, level, root)
    return values


def _retrieve_url(row: dict[str, Any], level: Level, root: str) -> str:
    url = f"{root}/studies/{row['StudyInstanceUID']}"
    if level is Level.SERIES or level is Level.IMAGE:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is Level.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url
