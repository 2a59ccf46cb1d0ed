"""``create_app()``: the one FastAPI application of the HTTP front ends, built by the
composition root; no globals.

Routes: the probes, ``/livez`` (the process answers) and ``/readyz`` (it can take work:
:mod:`pacs.services.readiness`; ``/health`` is the same), and ``/metrics`` (Prometheus,
:mod:`pacs.services.metrics`); DICOMweb (PS3.18, :mod:`dicomweb`) under ``/dicom-web``: QIDO-RS,
WADO-RS, STOW-RS, rejection (IOCM); WADO-URI at ``/wado``; the QA and administration REST API
(:mod:`pacs.api`: the review, jobs, tokens, the AE registry, purge) under ``/api``; the web UI
(:mod:`pacs.ui`) at ``/`` and ``/ui``. Each route declares the role it needs
(:mod:`pacs.http.auth`). Around them (:mod:`pacs.http.security`): security headers, the
cross-site guard of state-changing requests, CORS on DICOMweb for configured origins only,
the bound on request bodies; outermost, each request's id, log line and metrics
(:mod:`pacs.http.telemetry`).

The routers are module-level: a route takes what it calls as a dependency that reads
``app.state`` (``web: WebDep``, ``wado: WadoDep``), which this factory fills with what the
composition root built.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.middleware.gzip import GZipMiddleware

from dicomweb import changefeed, qido, reject, stow, wado
from dicomweb.wado_services import WadoServices
from pacs import __version__
from pacs.api import admin
from pacs.api import changes as change_feed
from pacs.api import orders as api_orders
from pacs.api import routes as api
from pacs.http import errors
from pacs.http.auth import PUBLIC, Access, RequiresOrScrapeToken
from pacs.http.context import DICOMWEB_PATH, Web
from pacs.http.security import (
    BodyLimit,
    CrossSiteGuard,
    DicomWebCors,
    RefusalAudit,
    SecurityHeaders,
)
from pacs.http.telemetry import RequestTelemetry
from pacs.services.auth import Role
from pacs.services.metrics import CONTENT_TYPE as METRICS_TYPE
from pacs.services.readiness import Readiness
from pacs.ui import pages as ui
from pacs.ui import sign_in

# Bulk answers are compressed already or are streamed files: gzip only the JSON and text.
_NOT_COMPRESSED = (
    "text/event-stream", "multipart/related", "application/dicom", "application/octet-stream",
    "image/jpeg", "image/png", "image/gif", "image/jp2", "image/jls", "image/jpx",
    "image/dicom-rle", "video/mpeg", "video/mp4", "application/pdf",
)


def create_app(*, web: Web, wado_services: WadoServices, readiness: Callable[[], Readiness],
               access: Access | None = None, audit: RefusalAudit | None = None,
               metrics: Callable[[], bytes] | None = None) -> FastAPI:
    """The HTTP front ends over ``web`` (and ``wado_services`` for WADO). ``access`` says how
    requests authenticate (default: not at all, ``--auth none``); ``readiness`` runs the
    readiness checks (blocking, bounded in time); ``audit`` records the requests refused (403
    cross-site, 413); ``metrics`` renders the Prometheus text (None: no ``/metrics``)."""
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

    @app.get("/livez", summary="200 while the process answers (liveness)",
             dependencies=[PUBLIC])
    async def livez() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    async def ready() -> JSONResponse:
        report = await run_in_threadpool(readiness)
        body = {"status": "ok" if report.ready else "unavailable",
                "checks": {check.value: result.value for check, result in report.checks.items()}}
        return JSONResponse(body, status_code=200 if report.ready else 503, headers=_NO_STORE)

    ready_summary = ("200 when the index answers, the blob store takes a write and the DIMSE "
                     "and HTTP listeners accept; else 503, naming the checks that failed")
    app.get("/readyz", summary=ready_summary, dependencies=[PUBLIC])(ready)
    app.get("/health", summary=f"{ready_summary} (as /readyz)", dependencies=[PUBLIC])(ready)

    if metrics is not None:
        render = metrics

        @app.get("/metrics", summary="Prometheus metrics (text format): the admin role, or "
                 "the scrape token (--metrics-token)", response_class=Response,
                 dependencies=[Depends(RequiresOrScrapeToken(Role.ADMIN))])
        async def metrics_text() -> Response:
            return Response(await run_in_threadpool(render), media_type=METRICS_TYPE,
                            headers=_NO_STORE)

    app.include_router(qido.router, prefix=DICOMWEB_PATH)
    app.include_router(wado.router, prefix=DICOMWEB_PATH)
    app.include_router(stow.router, prefix=DICOMWEB_PATH)
    app.include_router(reject.router, prefix=DICOMWEB_PATH)
    app.include_router(changefeed.router, prefix=DICOMWEB_PATH)
    app.include_router(wado.uri_router)
    app.include_router(api.router)
    app.include_router(admin.router)
    app.include_router(api_orders.router)
    app.include_router(change_feed.router)
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
    app.add_middleware(RequestTelemetry)
    return app


_NO_STORE = {"Cache-Control": "no-store"}
