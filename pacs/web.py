"""``create_app()``: the one FastAPI application of the HTTP front ends, built by the
composition root; no globals.

Routes: ``/health``; DICOMweb (PS3.18, :mod:`dicomweb`) under ``/dicom-web``: QIDO-RS,
WADO-RS, STOW-RS, rejection (IOCM); WADO-URI at ``/wado``; the QA and administration REST API
(:mod:`pacs.api`: the review, jobs, tokens, the AE registry, purge) under ``/api``; the web UI
(:mod:`pacs.ui`) at ``/`` and ``/ui``. Each route declares the role it needs
(:mod:`pacs.http.auth`). Around them (:mod:`pacs.http.security`): security headers, the
cross-site guard of state-changing requests, CORS on DICOMweb for configured origins only,
the bound on request bodies.

The routers are module-level: a route takes what it calls as a dependency that reads
``app.state`` (``web: WebDep``, ``wado: WadoDep``), which this factory fills with what the
composition root built.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.gzip import GZipMiddleware

from dicomweb import qido, reject, stow, wado
from dicomweb.wado_services import WadoServices
from pacs import __version__
from pacs.api import admin
from pacs.api import routes as api
from pacs.http import errors
from pacs.http.auth import PUBLIC, Access
from pacs.http.context import DICOMWEB_PATH, Web
from pacs.http.security import (
    BodyLimit,
    CrossSiteGuard,
    DicomWebCors,
    RefusalAudit,
    SecurityHeaders,
)
from pacs.ui import pages as ui
from pacs.ui import sign_in

# Bulk answers are compressed already or are streamed files: gzip only the JSON and text.
_NOT_COMPRESSED = (
    "text/event-stream", "multipart/related", "application/dicom", "application/octet-stream",
    "image/jpeg", "image/png", "image/gif", "image/jp2", "image/jls", "image/jpx",
    "image/dicom-rle", "video/mpeg", "video/mp4", "application/pdf",
)


def create_app(*, web: Web, wado_services: WadoServices, is_ready: Callable[[], bool],
               access: Access | None = None, audit: RefusalAudit | None = None) -> FastAPI:
    """The HTTP front ends over ``web`` (and ``wado_services`` for WADO). ``access`` says how
    requests authenticate (default: not at all, ``--auth none``); ``is_ready`` tells whether
    every listener accepts connections; ``audit`` records the requests refused (403
    cross-site, 413)."""
    app = FastAPI(
        title="pacs",
        version=__version__,
        description=(
            "DICOM PACS mini-server: DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS, WADO-URI) "
            "over the same archive as DIMSE, and the QA gate's REST API. Only archived "
            "studies are visible to DICOMweb."
        ),
    )
    app.state.web = web
    app.state.wado = wado_services
    app.state.access = access if access is not None else Access()
    errors.install(app, page=ui.error_answer)

    @app.get("/health", summary="200 once the DIMSE and HTTP listeners accept connections",
             dependencies=[PUBLIC])
    def health() -> JSONResponse:
        if is_ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "starting"}, status_code=503)

    app.include_router(qido.router, prefix=DICOMWEB_PATH)
    app.include_router(wado.router, prefix=DICOMWEB_PATH)
    app.include_router(stow.router, prefix=DICOMWEB_PATH)
    app.include_router(reject.router, prefix=DICOMWEB_PATH)
    app.include_router(wado.uri_router)
    app.include_router(api.router)
    app.include_router(admin.router)
    app.include_router(ui.router)
    app.include_router(sign_in.router)
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
