"""The change feed in the shape of Microsoft's DICOM service (``/dicom-web/changefeed``), for
clients written for it.

``GET /changefeed?offset=N&limit=M&includeMetadata=true|false`` answers a JSON list of
``{"Sequence", "StudyInstanceUid", "SeriesInstanceUid", "SopInstanceUid", "Action",
"Timestamp", "State", "Metadata"}``: the entries numbered above ``offset`` (default 0), at
most ``limit`` (default 10, capped at 100, as that service does); ``GET
/changefeed/latest`` the newest entry (404 while the feed is empty). ``Action`` is
``Create``, ``Delete`` or ``Update``; ``State`` is ``current``, ``replaced`` or ``deleted``
(:mod:`pacs.services.changes`). ``Metadata`` (unless ``includeMetadata=false``) is the
instance's DICOM JSON (PS3.18 Annex F) when the entry names an instance that is current and
visible (archived); it is left out otherwise. Role: ``qa``, as ``/api/changes``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from dicomweb.metadata import with_base
from dicomweb.urls import base_url
from dicomweb.wado_services import WadoDep, WadoServices
from pacs.http.auth import requires
from pacs.http.context import WebDep
from pacs.http.errors import HttpError
from pacs.services.auth import Role
from pacs.services.changes import MAX_SEQ, Action, ChangeService, EntryState, FeedEntry
from pacs.services.errors import NotFound

router = APIRouter(tags=["Change feed"], dependencies=[requires(Role.QA)])

MAX_LIMIT = 100


@router.get("/changefeed", summary="Change feed entries after `offset` (Microsoft's shape)")
def changefeed(
    request: Request, web: WebDep, wado: WadoDep,
    offset: int = Query(default=0, ge=0, le=MAX_SEQ),
    limit: int = Query(default=10, ge=1, le=MAX_SEQ, description=f"capped at {MAX_LIMIT}"),
    include_metadata: bool | None = Query(default=None, alias="includeMetadata"),
    include_lower: bool | None = Query(default=None, alias="includemetadata"),
) -> JSONResponse:
    entries = _feed(web.changes).feed(offset, min(limit, MAX_LIMIT))
    metadata = _include(include_metadata, include_lower)
    return JSONResponse([_entry(request, wado, entry, metadata) for entry in entries],
                        headers={"Cache-Control": "no-store"})


@router.get("/changefeed/latest", summary="The newest change feed entry (Microsoft's shape)")
def latest(
    request: Request, web: WebDep, wado: WadoDep,
    include_metadata: bool | None = Query(default=None, alias="includeMetadata"),
    include_lower: bool | None = Query(default=None, alias="includemetadata"),
) -> JSONResponse:
    entry = _feed(web.changes).latest()
    if entry is None:
        raise HttpError(404, "the change feed is empty")
    return JSONResponse(_entry(request, wado, entry, _include(include_metadata, include_lower)),
                        headers={"Cache-Control": "no-store"})


def _feed(changes: ChangeService | None) -> ChangeService:
    if changes is None:
        raise HttpError(404, "this server offers no change feed")
    return changes


def _include(camel: bool | None, lower: bool | None) -> bool:
    """``includeMetadata`` (either spelling: that service takes it in any case), default true."""
    for value in (camel, lower):
        if value is not None:
            return value
    return True


def _entry(request: Request, wado: WadoServices, entry: FeedEntry,
           include_metadata: bool) -> dict[str, Any]:
    change = entry.change
    body: dict[str, Any] = {
        "Sequence": change.seq,
        "StudyInstanceUid": change.study_instance_uid,
        "SeriesInstanceUid": change.series_instance_uid,
        "SopInstanceUid": change.sop_instance_uid,
        "Action": change.action.value,
        "Timestamp": change.as_json()["time"],
        "State": entry.state.value,
    }
    if (include_metadata and entry.state is EntryState.CURRENT
            and change.action is not Action.DELETE and change.series_instance_uid
            and change.sop_instance_uid):
        found = _metadata(request, wado, change.study_instance_uid,
                          change.series_instance_uid, change.sop_instance_uid)
        if found is not None:
            body["Metadata"] = found
    return body


def _metadata(request: Request, wado: WadoServices, study: str, series: str,
              instance: str) -> Any:
    """The instance's DICOM JSON, or None when it is not visible (not archived, or gone, or
    its file is missing: one entry's metadata never fails the page)."""
    try:
        parts = wado.metadata.metadata(wado.metadata.items(study, series, instance)).parts
    except NotFound:
        return None
    return json.loads(with_base(parts[0], base_url(request))) if parts else None
