"""The one table from service errors to HTTP statuses, and the JSON error body.

Every error answer is ``{"error": <message>}`` with the status below, so a viewer or script
gets the reason, not only a code. Front-end errors (a malformed query parameter, a wrong
content type) raise :class:`HttpError` with their own status.

A message names the problem and never an internal host, port, path, SQL statement or driver
message: the services word theirs so (and log the details), and an exception that is not a
:class:`PacsError` (a bug, an unexpected OS error) answers a fixed 500 body while its
traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from pacs.services.errors import (
    AlreadyExists,
    CannotTranscode,
    Conflict,
    DecoderBusy,
    DecodeTooLarge,
    IllegalTransition,
    InvalidInstance,
    InvalidQuery,
    InvalidValue,
    NotFound,
    OutOfResources,
    PacsError,
    SopClassMismatch,
    UnknownPeer,
)

log = logging.getLogger(__name__)


class HttpError(Exception):
    """An answer decided by a route: ``status`` with ``message`` (and optional headers)."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# Most specific first: the first class an error is an instance of decides.
STATUS: tuple[tuple[type[PacsError], int], ...] = (
    (NotFound, 404),
    (IllegalTransition, 409),
    (Conflict, 409),  # an order's accession or study taken, a cancelled order changed
    (InvalidQuery, 400),
    (SopClassMismatch, 409),
    (InvalidInstance, 400),
    (DecodeTooLarge, 422),  # the request is fine; this instance is too large to decode here
    (CannotTranscode, 406),  # no acceptable representation (PS3.18 8.7.3)
    (UnknownPeer, 404),
    (OutOfResources, 503),
    (AlreadyExists, 409),  # a token name, an AE title taken
    (InvalidValue, 400),  # a token's name or role, an AE's host or port
)
RETRY_AFTER_S = 5  # seconds a client is told to wait when every decoding slot is taken


def status_of(error: PacsError) -> int:
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install(app: FastAPI,
            page: Callable[[Request, HttpError], Response | None] | None = None) -> None:
    """Register the handlers that turn errors into JSON answers; ``page`` may answer an
    :class:`HttpError` as an HTML page instead (the web UI's, for its own paths)."""

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, error: HttpError) -> Response:
        answer = page(request, error) if page is not None else None
        if answer is not None:
            return answer
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(IllegalTransition)
    async def _conflict(_request: Request, error: IllegalTransition) -> JSONResponse:
        return JSONResponse({"error": str(error), "state": error.current_state},
                            status_code=409)

    @app.exception_handler(PacsError)
    async def _pacs_error(request: Request, error: PacsError) -> JSONResponse:
        status = status_of(error)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, error)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(error, DecoderBusy) else None
        return error_response(status, str(error), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette's server-error middleware calls this and then re-raises, so the
        # traceback is logged by the server; the client learns only that it failed.
        log.error("%s %s failed: %s", request.method, request.url.path,
                  type(error).__name__)
        return error_response(500, "internal error (details are in the server log)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")
