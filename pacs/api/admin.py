"""The administration routes under ``/api``, for the ``admin`` role only: API tokens, the AE
registry and the purge of rejected studies (routing jobs are in :mod:`pacs.api.routes`).

They do what ``pacs token``, ``pacs ae`` and ``pacs purge`` do, through the same services, and
the audit trail names the admin who asked (``http:token:NAME@ADDRESS``). A token's secret is
in the answer that creates it and nowhere else (that answer is ``Cache-Control: no-store``).
Answers to bad requests are ``{"error": ...}``: 400 for a value the service cannot use (its
message says why), 409 for a name or title taken, 404 for an unknown one.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body, Path, Response

from pacs.api import models
from pacs.api.models import AeIn, AeOut, PurgeIn, PurgeOut, TokenCreatedOut, TokenIn, TokenOut
from pacs.http.auth import Who, requires
from pacs.http.context import WebDep
from pacs.http.errors import HttpError
from pacs.services.auth import Role

router = APIRouter(prefix="/api", tags=["Administration"])

TokenName = Annotated[str, Path(min_length=1, max_length=64)]
AeTitle = Annotated[str, Path(min_length=1, max_length=64)]
DAY_SECONDS = 86400


@router.get("/tokens", summary="API tokens: names, roles, dates, revocation (never secrets)",
            dependencies=[requires(Role.ADMIN)])
def tokens(web: WebDep) -> list[TokenOut]:
    return [models.token_out(record) for record in web.tokens.list()]


@router.post("/tokens", status_code=201,
             summary="Make an API token; its secret is in this answer only",
             dependencies=[requires(Role.ADMIN)])
def create_token(web: WebDep, who: Who, body: TokenIn, response: Response) -> TokenCreatedOut:
    record, secret = web.tokens.create(body.name, body.role, body.expires_days, who=who)
    response.headers["Cache-Control"] = "no-store"
    return TokenCreatedOut(token=models.token_out(record), secret=secret)


@router.delete("/tokens/{name}", status_code=204,
               summary="Revoke a token (servers stop accepting it within 5 s)",
               dependencies=[requires(Role.ADMIN)])
def revoke_token(web: WebDep, who: Who, name: TokenName) -> Response:
    if not web.tokens.revoke(name, who=who):
        raise HttpError(404, f"no token named {name!r}")
    return Response(status_code=204)


@router.get("/ae", summary="The AE registry: remote AEs, their addresses and services",
            dependencies=[requires(Role.ADMIN)])
def application_entities(web: WebDep) -> list[AeOut]:
    return [models.ae_out(record) for record in web.ae_registry.list()]


@router.post("/ae", status_code=201,
             summary="Register a remote AE (running servers apply it within 2 s)",
             dependencies=[requires(Role.ADMIN)])
def add_application_entity(web: WebDep, who: Who, body: AeIn) -> AeOut:
    return models.ae_out(web.ae_registry.add(
        body.ae_title, hosts=body.hosts, port=body.port, allow=body.allow,
        move_destination=body.move_destination, who=who))


@router.delete("/ae/{title}", status_code=204, summary="Remove a registered AE",
               dependencies=[requires(Role.ADMIN)])
def remove_application_entity(web: WebDep, who: Who, title: AeTitle) -> Response:
    if not web.ae_registry.remove(title, who=who):
        raise HttpError(404, f"no AE titled {title.strip()!r}")
    return Response(status_code=204)


@router.post("/purge", summary="Delete rejected studies past the retention period, now",
             dependencies=[requires(Role.ADMIN)])
def purge(web: WebDep, who: Who,
          body: Annotated[PurgeIn | None, Body()] = None) -> PurgeOut:
    days = body.retention_days if body is not None else None
    retention = (web.workflow.retention if days is None else dt.timedelta(days=days))
    purged = web.workflow.purge(who=who, retention=retention)
    return PurgeOut(retention_days=retention.total_seconds() / DAY_SECONDS, purged=purged)
