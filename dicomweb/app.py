"""``create_app()``: the FastAPI application, built by the composition root; no globals."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from pacs import __version__


def create_app(*, is_ready: Callable[[], bool]) -> FastAPI:
    """The HTTP front end. ``is_ready`` tells whether every listener accepts connections."""
    app = FastAPI(
        title="pacs",
        version=__version__,
        description="DICOM PACS mini-server: DICOMweb (PS3.18), QA and administration.",
    )

    @app.get("/health", summary="200 once the DIMSE and HTTP listeners accept connections")
    def health() -> JSONResponse:
        if is_ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "starting"}, status_code=503)

    return app
