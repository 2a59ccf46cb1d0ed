"""What each HTTP request leaves behind: an id, a log line and its metrics.

:class:`RequestTelemetry`, the outermost middleware, gives every request an id: the client's
``X-Request-ID`` when it is sane (1 to 128 characters of ``A-Z a-z 0-9 - . _ ~ : + / =``,
beginning with a letter or digit), else a new one (32 hex digits). It is set in
:data:`~pacs.services.log_lines.REQUEST_ID` for the request's task (so every line logged while
answering it carries it, in the JSON format) and sent back in the answer's ``X-Request-ID``.

When the answer is sent, one line is logged (logger ``pacs.http.access``: method, route
template, status, milliseconds; at DEBUG for the probes and /metrics, which a cluster asks
every few seconds, else INFO), and the request is counted by method, route template and
status (:mod:`pacs.services.metrics`). The route is the template the request matched
(``/dicom-web/studies/{study}/series``), never its path or query, which can carry UIDs and
patient names; a request no route matched is ``unmatched``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi.routing import iter_route_contexts
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.services import metrics
from pacs.services.log_lines import REQUEST_ID

log = logging.getLogger("pacs.http.access")

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-._~:+/=]{0,127}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET = frozenset({"/livez", "/readyz", "/health", "/metrics"})
UNMATCHED = "unmatched"


def request_id(given: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if given is not None and _SANE.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RouteTemplates:
    """The whole template of the route that answered a request. The router puts the route
    in the scope; a route of an included router knows its path below the router's prefix
    only (``/studies/{study}/series``), so the application's route table, read once, gives
    the whole one (``/dicom-web/studies/{study}/series``)."""

    def __init__(self) -> None:
        self._templates: dict[int, str] | None = None

    def of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        if self._templates is None:
            self._templates = {id(context.original_route): context.path
                               for context in iter_route_contexts(scope["app"].routes)
                               if context.path}
        found = self._templates.get(id(route))
        if found is None:
            found = getattr(route, "path", None)
        return found if isinstance(found, str) and found else UNMATCHED


class RequestTelemetry:
    """ASGI middleware: the request id, the access line and the request's metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        ident = request_id(given)
        # Set for this request's task, and the threads it hands work to (Starlette copies
        # the context to them); not reset: the task ends with the request, and what uvicorn
        # logs of an error escaping the application still carries it.
        REQUEST_ID.set(ident)
        status = 500  # unless an answer starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[HEADER] = ident
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = self.routes.of(scope)
            metrics.http_request(method, route, status, seconds)
            log.log(logging.DEBUG if route in _QUIET else logging.INFO,
                    "%s %s %d %.1f ms", method, route, status, seconds * 1000)
