"""The change feed under ``/api/changes`` (JSON): what happened to the archive, in order, for
a poller that resumes from the last number it saw.

``GET /api/changes?since=SEQ&limit=N`` answers ``{"changes": [{"seq", "time", "event",
"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}], "last": SEQ}``: the changes
numbered above ``since`` (default 0: from the oldest kept), at most ``limit`` (default 100,
capped at 1000), and the highest number given so far. Numbers have no gaps, so the next
poll is ``since=<the last entry's seq>``; an empty page means nothing new.

Role: ``qa``. The feed names studies in every state (quarantined and rejected ones too, which
a viewer never sees), so it is for the QA and integration side, not for viewers.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from pacs.http.auth import requires
from pacs.http.context import WebDep
from pacs.http.errors import HttpError
from pacs.services.auth import Role
from pacs.services.changes import MAX_PAGE, MAX_SEQ, ChangeService

router = APIRouter(prefix="/api", tags=["Change feed"])


@router.get("/changes", summary="Changes of the archive numbered above `since`, in order",
            dependencies=[requires(Role.QA)])
def changes(
    web: WebDep,
    since: int = Query(default=0, ge=0, le=MAX_SEQ),
    limit: int = Query(default=100, ge=1, le=MAX_SEQ, description=f"capped at {MAX_PAGE}"),
) -> JSONResponse:
    page = feed_of(web.changes).page(since, limit)
    return JSONResponse({"changes": [change.as_json() for change in page.changes],
                         "last": page.last}, headers={"Cache-Control": "no-store"})


def feed_of(changes: ChangeService | None) -> ChangeService:
    if changes is None:
        raise HttpError(404, "this server offers no change feed")
    return changes
