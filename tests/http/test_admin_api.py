"""The administration REST API against a real ``pacs serve --auth required``: API tokens made,
listed and revoked over HTTP (the new token works at once, and stops within the 5 s the
server remembers accepted tokens), the AE registry (a C-MOVE destination added over HTTP is
used by DCMTK ``movescu``), the purge, the admin role on every route, the admin named in the
audit trail, and the cross-site guard on these state changes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.server import PacsServer, bearer, token
from tests.support.wait import until

ADMIN_ACTOR = "http:token:admin@127.0.0.1"
ARCHIVED = make_uid("admin-api", "archived")

ADMIN_ROUTES = [
    ("GET", "/api/tokens", None),
    ("POST", "/api/tokens", {"name": "never-made", "role": "viewer"}),
    ("DELETE", "/api/tokens/viewer", None),
    ("GET", "/api/ae", None),
    ("POST", "/api/ae", {"ae_title": "NEVERMADE", "hosts": ["127.0.0.1"]}),
    ("DELETE", "/api/ae/NEVERMADE", None),
    ("POST", "/api/purge", {"retention_days": 0}),
]


@dataclass
class Site:
    server: PacsServer
    tokens: dict[str, str]
    workdir: Path

    def call(self, method: str, path: str, who: str | None = "admin",
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(bearer(self.tokens[who]))
        return httpx.request(method, f"{self.server.base_url}{path}", headers=headers,
                             timeout=30, **kwargs)

    def events(self, action: str) -> list[dict[str, Any]]:
        answer = self.call("GET", "/api/audit", params={"action": action})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found

    def token_names(self) -> dict[str, dict[str, Any]]:
        answer = self.call("GET", "/api/tokens")
        assert answer.status_code == 200, answer.text
        return {row["name"]: row for row in answer.json()}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("admin-api")
    server = PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
                        extra_args=["--auth", "required", "--dimse-processes", "1"])
    tokens = {role: token(server, role, role) for role in ("viewer", "qa", "admin")}
    server.start()
    try:
        dcmtk.store_datasets(server.dimse_port, [ct_instance(
            PatientID="ADMIN-1", PatientName="Admin^One", StudyInstanceUID=ARCHIVED)],
            workdir=root)
        yield Site(server, tokens, root)
    finally:
        server.stop()


def _qido(site: Site, secret: str) -> int:
    return httpx.get(f"{site.server.base_url}/dicom-web/studies", headers=bearer(secret),
                     timeout=30).status_code


def test_an_admin_makes_a_token_that_works_at_once_and_revokes_it(site: Site) -> None:
    made = site.call("POST", "/api/tokens", json={"name": "made-over-http", "role": "viewer",
                                                  "expires_days": 7})
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    body = made.json()
    secret = body["secret"]
    assert secret.startswith("pacs_")
    assert body["token"]["name"] == "made-over-http"
    assert body["token"]["role"] == "viewer"
    assert body["token"]["expires_at"] is not None and body["token"]["revoked_at"] is None
    assert _qido(site, secret) == 200

    listed = site.call("GET", "/api/tokens")
    assert listed.status_code == 200
    row = {r["name"]: r for r in listed.json()}["made-over-http"]
    assert set(row) == {"name", "role", "created_at", "expires_at", "last_used_at",
                        "revoked_at"}  # no secret, no hash, no lookup id
    assert secret not in listed.text and secret.split("_")[1] not in listed.text
    assert "made-over-http" in site.server.cli("token", "list").stdout

    again = site.call("POST", "/api/tokens", json={"name": "made-over-http", "role": "qa"})
    assert again.status_code == 409, again.text
    assert again.json() == {"error": "a token named 'made-over-http' exists already"}

    revoked = site.call("DELETE", "/api/tokens/made-over-http")
    assert revoked.status_code == 204, revoked.text
    assert revoked.content == b""
    # accepted tokens are remembered for 5 s (pacs.http.auth.VerifiedTokens), then refused
    until("the revoked token refused", lambda: _qido(site, secret) == 401, timeout=30)
    assert site.token_names()["made-over-http"]["revoked_at"] is not None


def test_the_audit_names_the_admin_and_never_the_secret(site: Site) -> None:
    made = site.call("POST", "/api/tokens", json={"name": "audited", "role": "qa"})
    assert made.status_code == 201, made.text
    assert site.call("DELETE", "/api/tokens/audited").status_code == 204
    created = [e for e in site.events("token-create") if e["detail"]["name"] == "audited"]
    assert [e["actor"] for e in created] == [ADMIN_ACTOR]
    assert created[0]["detail"]["role"] == "qa"
    revoked = [e for e in site.events("token-revoke") if e["detail"]["name"] == "audited"]
    assert [e["actor"] for e in revoked] == [ADMIN_ACTOR]
    everything = site.call("GET", "/api/audit", params={"limit": 10000}).text
    assert made.json()["secret"] not in everything
    assert made.json()["secret"] not in site.server.log()


@pytest.mark.parametrize(("body", "error"), [
    ({"name": "has space", "role": "viewer"}, "a token name is 1 to 64 letters"),
    ({"name": "x" * 65, "role": "viewer"}, "body.name: "),
    ({"name": "ok", "role": "superuser"}, "body.role: "),
    ({"name": "ok", "role": "viewer", "expires_days": 0}, "body.expires_days: "),
    ({"name": "ok", "role": "viewer", "secret": "mine"}, "body.secret: "),  # extra="forbid"
    ({"role": "viewer"}, "body.name: "),
])
def test_a_bad_token_request_is_400_and_makes_nothing(site: Site, body: dict[str, Any],
                                                      error: str) -> None:
    answer = site.call("POST", "/api/tokens", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(error), answer.json()
    assert not {"has space", "ok"} & set(site.token_names())


def test_revoking_an_unknown_token_is_404(site: Site) -> None:
    answer = site.call("DELETE", "/api/tokens/no-such-token")
    assert answer.status_code == 404
    assert answer.json() == {"error": "no token named 'no-such-token'"}


@pytest.mark.parametrize("who", ["qa", "viewer"])
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_only_an_admin_may(site: Site, who: str, method: str, path: str,
                           body: dict[str, Any] | None) -> None:
    answer = site.call(method, path, who, json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json() == {"error": "this needs the admin role"}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_no_token_is_401(site: Site, method: str, path: str,
                         body: dict[str, Any] | None) -> None:
    answer = site.call(method, path, None, json=body)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == 'Bearer realm="pacs"'


def test_refused_admin_requests_changed_nothing(site: Site) -> None:
    """After the 401s and 403s above (or alone): nothing they asked for exists."""
    for who in (None, "qa", "viewer"):
        for method, path, body in ADMIN_ROUTES:
            site.call(method, path, who, json=body)
    assert "never-made" not in site.token_names()
    assert "viewer" in site.token_names()
    assert site.token_names()["viewer"]["revoked_at"] is None
    assert "NEVERMADE" not in {row["ae_title"] for row in site.call("GET", "/api/ae").json()}


def test_a_cross_site_request_is_refused_before_it_changes_anything(site: Site) -> None:
    """A page on another site can send a POST with no CORS preflight; the guard refuses it,
    bearer token or not (pacs.http.security.CrossSiteGuard)."""
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = site.call("POST", "/api/tokens", headers=headers,
                           json={"name": "cross-site", "role": "admin"})
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"].startswith("cross-site request refused")
        removed = site.call("DELETE", "/api/tokens/viewer", headers=headers)
        assert removed.status_code == 403, removed.text
        purged = site.call("POST", "/api/purge", headers=headers)
        assert purged.status_code == 403, purged.text
    assert "cross-site" not in site.token_names()
    assert site.token_names()["viewer"]["revoked_at"] is None
    same = site.call("POST", "/api/tokens", json={"name": "same-site", "role": "viewer"},
                     headers={"Origin": site.server.base_url, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 201, same.text


def test_a_ui_session_cookie_cannot_change_anything_through_the_api(site: Site) -> None:
    """The cookie authenticates reads anywhere and changes only on the UI's forms (with their
    CSRF token): a POST to /api with it alone is unauthenticated."""
    with httpx.Client(base_url=site.server.base_url, timeout=30) as browser:
        form = browser.get("/ui/sign-in")
        csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
        signed = browser.post("/ui/sign-in", data={"token": site.tokens["admin"], "csrf": csrf})
        assert signed.status_code == 303, signed.text
        assert browser.get("/api/tokens").status_code == 200  # a read
        answer = browser.post("/api/tokens", json={"name": "by-cookie", "role": "admin"})
        assert answer.status_code == 401, answer.text
    assert "by-cookie" not in site.token_names()


def _move(site: Site, destination: str) -> list[int]:
    result = dcmtk.run("movescu", "-d", "-S", "-aec", "PACS", "-aem", destination,
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ARCHIVED}",
                       "127.0.0.1", str(site.server.dimse_port))
    return [int(value, 16) for value in re.findall(r"DIMSE Status\s*: 0x([0-9A-Fa-f]{4})",
                                                   result.stdout + result.stderr)]


def test_a_move_destination_registered_over_http_is_used(site: Site) -> None:
    accepted = site.call("POST", f"/api/studies/{ARCHIVED}/accept")
    assert accepted.status_code in (200, 409), accepted.text  # archived already with auto QA
    workstation = dcmtk.Storescp(site.workdir / "ws", ae_title="HTTPWS").start()
    try:
        assert _move(site, "HTTPWS") == [0xA801]  # not registered
        added = site.call("POST", "/api/ae", json={
            "ae_title": "HTTPWS", "hosts": ["127.0.0.1"], "port": workstation.port,
            "allow": ["find", "move"], "move_destination": True})
        assert added.status_code == 201, added.text
        assert added.json() == {**added.json(), "ae_title": "HTTPWS", "hosts": ["127.0.0.1"],
                                "port": workstation.port, "allow": ["find", "move"],
                                "move_destination": True, "source": "cli"}
        listed = {row["ae_title"]: row for row in site.call("GET", "/api/ae").json()}
        assert listed["HTTPWS"]["port"] == workstation.port
        assert any(line.split()[:2] == ["HTTPWS", "127.0.0.1"]
                   for line in site.server.cli("ae", "list").stdout.splitlines())

        until("HTTPWS is a move destination", lambda: _move(site, "HTTPWS")[-1:] == [0x0000])
        assert workstation.files()

        taken = site.call("POST", "/api/ae", json={"ae_title": "HTTPWS",
                                                   "hosts": ["127.0.0.2"]})
        assert taken.status_code == 409, taken.text
        assert "registered already" in taken.json()["error"]

        removed = site.call("DELETE", "/api/ae/HTTPWS")
        assert removed.status_code == 204, removed.text
        until("HTTPWS is gone", lambda: _move(site, "HTTPWS") == [0xA801])
        assert site.call("DELETE", "/api/ae/HTTPWS").status_code == 404
    finally:
        workstation.stop()
    added_events = [e for e in site.events("ae-add") if e["detail"]["ae_title"] == "HTTPWS"]
    removed_events = [e for e in site.events("ae-remove")
                      if e["detail"]["ae_title"] == "HTTPWS"]
    assert [e["actor"] for e in added_events + removed_events] == [ADMIN_ACTOR] * 2


@pytest.mark.parametrize(("body", "error"), [
    ({"ae_title": "BAD\\TITLE", "hosts": ["127.0.0.1"]}, "AE title 'BAD\\\\TITLE' must be"),
    ({"ae_title": "WS", "hosts": ["not a host"]}, "host 'not a host' is not an IP address"),
    ({"ae_title": "WS", "hosts": ["10.1.2.3/24"]}, "host '10.1.2.3/24' is not a network"),
    ({"ae_title": "WS", "hosts": ["*", "127.0.0.1"]}, "* (any address) cannot be combined"),
    ({"ae_title": "WS", "hosts": ["127.0.0.1"], "allow": ["echo"]}, "no service 'echo'"),
    ({"ae_title": "WS", "hosts": ["127.0.0.1"], "move_destination": True},
     "a move destination needs a port"),
    ({"ae_title": "WS", "hosts": []}, "body.hosts: "),
    ({"ae_title": "WS", "hosts": ["127.0.0.1"], "port": 70000}, "body.port: "),
    ({"ae_title": "WS", "hosts": ["127.0.0.1"], "services": ["store"]}, "body.services: "),
])
def test_a_bad_ae_is_400_with_the_reason(site: Site, body: dict[str, Any], error: str) -> None:
    answer = site.call("POST", "/api/ae", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(error), answer.json()
    assert "WS" not in {row["ae_title"] for row in site.call("GET", "/api/ae").json()}


def test_an_admin_purges_rejected_studies_now(site: Site) -> None:
    study = make_uid("admin-api", "rejected")
    dcmtk.store_datasets(site.server.dimse_port, [ct_instance(
        PatientID="ADMIN-2", StudyInstanceUID=study)], workdir=site.workdir)
    rejected = site.call("POST", f"/api/studies/{study}/reject", json={"reason": "test"})
    assert rejected.status_code == 200, rejected.text

    kept = site.call("POST", "/api/purge")  # the server's retention: 30 days
    assert kept.status_code == 200, kept.text
    assert kept.json() == {"retention_days": 30.0, "purged": []}
    assert site.call("GET", f"/api/studies/{study}").status_code == 200

    purged = site.call("POST", "/api/purge", json={"retention_days": 0})
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"retention_days": 0.0, "purged": [study]}
    assert site.call("GET", f"/api/studies/{study}").status_code == 404
    deletions = [e for e in site.events("delete") if e["study_instance_uid"] == study]
    assert [e["actor"] for e in deletions] == [ADMIN_ACTOR]

    for bad in ({"retention_days": -1}, {"days": 0}):
        answer = site.call("POST", "/api/purge", json=bad)
        assert answer.status_code == 400, answer.text
