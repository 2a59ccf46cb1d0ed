"""Every HTTP route declares the access it needs in one place: a role (``requires``) or
``PUBLIC``, never neither and never both. A new route without a declaration fails here, so
it can never be public by accident."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, Route

from dicomweb.wado_services import wado_services
from pacs.http.auth import declared_access, requires
from pacs.http.context import Web
from pacs.serve import open_services
from pacs.services.auth import Role
from pacs.services.readiness import Readiness
from pacs.settings import Settings
from pacs.web import create_app

PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/livez"), ("GET", "/readyz"),
                 ("GET", "/"), ("GET", "/ui/sign-in"),
                 ("POST", "/ui/sign-in"), ("POST", "/ui/sign-out"),
                 ("GET", "/ui/sign-in/oidc"), ("GET", "/ui/sign-in/callback")}
"""Routes open to anyone: the probes (liveness, readiness), the redirect to the studies
page, signing in (with a token, or at the OIDC identity provider and back) and out. None of
them answers anything about a patient."""

FRAMEWORK_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
"""FastAPI's own: the API's description (no patient data), public by decision."""

STATIC_MOUNTS = {"/ui/static"}  # the UI's stylesheet and script


@pytest.fixture(scope="module")
def make_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], FastAPI]]:
    """Builds the application as the composition root does (services from one Settings)."""
    root = tmp_path_factory.mktemp("routes")
    with open_services(Settings(data_dir=root)) as services:
        web = Web(query=services.query, retrieve=services.retrieve, ingest=services.ingest,
                  workflow=services.workflow, routing=services.routing,
                  tokens=services.tokens, ae_registry=services.ae_registry)
        yield lambda: create_app(web=web, wado_services=wado_services(services.retrieve),
                                 readiness=lambda: Readiness({}), metrics=lambda: b"")


@pytest.fixture
def app(make_app: Callable[[], FastAPI]) -> FastAPI:
    return make_app()


def undeclared(app: FastAPI) -> list[str]:
    """What is wrong with the route table: routes without exactly one declared access,
    public routes not in the list above, and unknown routes of other kinds."""
    problems = []
    for route in iter_route_contexts(app.routes):
        original = route.original_route
        if isinstance(original, Mount):
            if route.path not in STATIC_MOUNTS:
                problems.append(f"mount {route.path}")
            continue
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            if not (isinstance(original, Route) and route.path in FRAMEWORK_ROUTES):
                problems.append(f"{type(original).__name__} {route.path}")
            continue
        declared = declared_access(dependant.dependencies)
        for method in sorted(route.methods or ()):
            if len(declared) != 1:
                problems.append(f"{method} {route.path}: declares {declared}")
            elif declared == [None] and (method, route.path) not in PUBLIC_ROUTES:
                problems.append(f"{method} {route.path}: public, and not in PUBLIC_ROUTES")
    return problems


def access_table(app: FastAPI) -> dict[tuple[str, str], Role | None]:
    table = {}
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            (access,) = declared_access(dependant.dependencies)
            for method in route.methods or ():
                table[(method, route.path)] = access
    return table


def test_every_route_declares_one_access(app: FastAPI) -> None:
    assert undeclared(app) == []


def test_a_route_without_a_declaration_is_caught(app: FastAPI) -> None:
    careless = APIRouter()

    @careless.get("/api/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    twice = APIRouter(dependencies=[requires(Role.VIEWER)])

    @twice.get("/api/twice", dependencies=[requires(Role.QA)])
    def declared_twice() -> dict[str, str]:
        return {}

    app.include_router(careless)
    app.include_router(twice)
    assert sorted(undeclared(app)) == ["GET /api/forgotten: declares []",
                                       "GET /api/twice: declares [<Role.VIEWER: 'viewer'>, "
                                       "<Role.QA: 'qa'>]"]


def test_the_roles_of_the_issue(app: FastAPI) -> None:
    """viewer reads, uploader stores, qa reviews (and OHIF's reject), admin runs jobs, keeps
    the tokens and the AE registry, purges, and reads the metrics (as does the scrape
    token)."""
    table = access_table(app)
    by_role: dict[Role | None, set[tuple[str, str]]] = {}
    for key, access in table.items():
        by_role.setdefault(access, set()).add(key)
    assert by_role[Role.UPLOADER] == {("POST", "/dicom-web/studies"),
                                      ("POST", "/dicom-web/studies/{study}")}
    assert by_role[Role.ADMIN] == {("GET", "/api/jobs"), ("POST", "/api/jobs/{job_id}/retry"),
                                   ("GET", "/ui/jobs"), ("POST", "/ui/jobs/{job_id}/retry"),
                                   ("GET", "/api/tokens"), ("POST", "/api/tokens"),
                                   ("DELETE", "/api/tokens/{name}"), ("GET", "/api/ae"),
                                   ("POST", "/api/ae"), ("DELETE", "/api/ae/{title}"),
                                   ("POST", "/api/purge"), ("GET", "/metrics")}
    assert ("POST", "/dicom-web/studies/{study}/series/{series}/reject/{code}") in by_role[
        Role.QA]
    assert ("GET", "/api/audit") in by_role[Role.QA]
    assert ("GET", "/ui/audit") in by_role[Role.QA]
    viewer = by_role[Role.VIEWER]
    assert ("GET", "/wado") in viewer
    assert all(path.startswith(("/dicom-web/", "/wado", "/ui/studies")) for _, path in viewer)
    assert all(method == "GET" for method, _ in viewer)
    assert {key for key in table if key[1].startswith("/api/")} <= (
        by_role[Role.QA] | by_role[Role.ADMIN])


def test_the_openapi_document_says_which_routes_need_a_bearer_token(app: FastAPI) -> None:
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), access in access_table(app).items():
        operation = document["paths"].get(path, {}).get(method.lower())
        if operation is None:  # the UI's pages are not in the API's document
            continue
        assert (operation.get("security") == [{"bearer": []}]) is (access is not None), path
