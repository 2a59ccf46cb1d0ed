"""``create_app()``: the FastAPI application, built by the composition root; no globals.

Routes: ``/health``; DICOMweb (PS3.18) under ``/dicom-web``: QIDO-RS (:mod:`dicomweb.qido`),
WADO-RS (:mod:`dicomweb.wado`), STOW-RS (:mod:`dicomweb.stow`); WADO-URI at ``/wado``.
Around them (:mod:`dicomweb.security`): security headers, the cross-site guard of
state-changing requests, CORS on DICOMweb for configured origins only.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.gzip import GZipMiddleware

from dicomweb import api, errors, qido, reject, stow, ui, wado
from dicomweb.context import BASE_PATH, Web
from dicomweb.security import (
    BodyLimit,
    CrossSiteGuard,
    DicomWebCors,
    RefusalAudit,
    SecurityHeaders,
)
from pacs import __version__

# Bulk answers are compressed already or are streamed files: gzip only the JSON and text.
_NOT_COMPRESSED = (
    "text/event-stream", "multipart/related", "application/dicom", "application/octet-stream",
    "image/jpeg", "image/png", "image/gif", "image/jp2", "image/jls", "image/jpx",
    "image/dicom-rle", "video/mpeg", "video/mp4", "application/pdf",
)


def create_app(*, web: Web, is_ready: Callable[[], bool],
               audit: RefusalAudit | None = None) -> FastAPI:
    """The HTTP front end. ``is_ready`` tells whether every listener accepts connections;
    ``audit`` records the requests refused (403 cross-site, 413)."""
    app = FastAPI(
        title="pacs",
        version=__version__,
        description=(
            "DICOM PACS mini-server: DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS, WADO-URI) "
            "over the same archive as DIMSE. Only archived studies are visible."
        ),
    )
    errors.install(app)

    @app.get("/health", summary="200 once the DIMSE and HTTP listeners accept connections")
    def health() -> JSONResponse:
        if is_ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "starting"}, status_code=503)

    app.include_router(qido.router(web), prefix=BASE_PATH)
    app.include_router(wado.router(web), prefix=BASE_PATH)
    app.include_router(stow.router(web), prefix=BASE_PATH)
    app.include_router(reject.router(web), prefix=BASE_PATH)
    app.include_router(wado.uri_router(web))
    app.include_router(api.router(web))
    app.include_router(ui.router(web))
    app.mount(ui.STATIC_PATH, ui.static_files(), name="ui-static")

    app.add_middleware(
        GZipMiddleware, minimum_size=1000, exclude_content_types=_NOT_COMPRESSED
    )
    # Added innermost first: a request meets the headers, then the guard, then CORS, then
    # the bound on its body.
    app.add_middleware(BodyLimit)
    app.add_middleware(DicomWebCors, origins=web.options.cors_origins,
                       methods=web.options.cors_methods)
    app.add_middleware(CrossSiteGuard, cors_origins=web.options.cors_origins, audit=audit)
    app.add_middleware(SecurityHeaders, audit=audit)
    return app
