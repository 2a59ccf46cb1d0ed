"""``--auth required`` against a real ``pacs serve``: bearer tokens made by ``pacs token
create``, 401 without a usable one (RFC 6750 challenge), 403 for a role that does not
include the route's, the principal in every audit row, refusals audited, CORS preflight
without a token."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from requests import HTTPError

from pacs.http.auth import VerifiedTokens
from pacs.services.auth import Principal, Role, TokenService
from storage.index import Index
from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.server import PacsServer, bearer, token
from tests.support.wait import until

VIEWER_ORIGIN = "http://viewer.example:3000"
ARCHIVED = make_uid("auth", "archived")
HELD = make_uid("auth", "held")
CHALLENGE = 'Bearer realm="pacs"'
INVALID = 'Bearer realm="pacs", error="invalid_token"'


@dataclass
class Site:
    server: PacsServer
    tokens: dict[str, str]  # role (or "revoked", "expired") -> secret
    workdir: Path

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{path}"

    def call(self, method: str, path: str, who: str | None = None,
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(bearer(self.tokens[who]))
        return httpx.request(method, self.url(path), headers=headers, timeout=30, **kwargs)

    def events(self, action: str) -> list[dict[str, Any]]:
        answer = self.call("GET", "/api/audit", "admin", params={"action": action})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found


def _expired_token(server: PacsServer) -> str:
    """A token that expired a day ago: made with a clock two days back."""
    index = Index(server.database_url)
    try:
        two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        _, secret = TokenService(index=index, clock=lambda: two_days_ago).create(
            "expired", "admin", expires_days=1)
    finally:
        index.dispose()
    return secret


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("auth")
    server = PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
                        extra_args=["--auth", "required", "--qa", "manual",
                                    "--cors-origins", VIEWER_ORIGIN, "--dimse-processes", "1"])
    tokens = {role: token(server, role, role) for role in ("viewer", "uploader", "qa", "admin")}
    tokens["revoked"] = token(server, "revoked", "admin")
    assert server.cli("token", "revoke", "revoked").returncode == 0
    tokens["expired"] = _expired_token(server)
    server.start()
    try:
        site = Site(server, tokens, root)
        dcmtk.store_datasets(server.dimse_port, [
            ct_instance(PatientID="AUTH-1", PatientName="Auth^One", StudyInstanceUID=ARCHIVED),
            ct_instance(PatientID="AUTH-2", PatientName="Auth^Two", StudyInstanceUID=HELD),
        ], workdir=root)
        accepted = site.call("POST", f"/api/studies/{ARCHIVED}/accept", "qa")
        assert accepted.status_code == 200, accepted.text
        yield site
    finally:
        server.stop()


def _stow_body(dataset: Dataset) -> tuple[bytes, dict[str, str]]:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    boundary = "auth-test-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode())
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; '
                                  f"boundary={boundary}"}


READS = [
    ("GET", "/dicom-web/studies"),
    ("GET", f"/dicom-web/studies/{ARCHIVED}/series"),
    ("GET", f"/dicom-web/studies/{ARCHIVED}/metadata"),
    ("GET", f"/wado?requestType=WADO&studyUID={ARCHIVED}&seriesUID=1.2&objectUID=1.2.3"),
    ("GET", "/api/qa"),
    ("GET", "/api/audit"),
    ("GET", "/api/jobs"),
    ("POST", f"/api/studies/{HELD}/accept"),
    ("POST", f"/dicom-web/studies/{HELD}/reject/113001%5EDCM"),
    ("POST", "/dicom-web/studies"),
]


def test_health_is_public_and_says_nothing_of_patients(site: Site) -> None:
    answer = site.call("GET", "/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


@pytest.mark.parametrize(("method", "path"), READS)
def test_no_credential_is_401_with_the_bearer_challenge(site: Site, method: str,
                                                        path: str) -> None:
    answer = site.call(method, path)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == CHALLENGE
    assert answer.json() == {"error": "authentication required: send Authorization: "
                                      "Bearer <token>"}


@pytest.mark.parametrize("credential", [
    "Bearer pacs_000000000000_notasecretnotasecretnotasecretnotasecret00",
    "Bearer not-a-token", "Bearer", "Basic dmlld2VyOnZpZXdlcg==", "revoked", "expired",
])
def test_a_refused_credential_is_401_invalid_token_and_says_no_more(site: Site,
                                                                   credential: str) -> None:
    header = (f"Bearer {site.tokens[credential]}" if credential in site.tokens
              else credential)
    answer = site.call("GET", "/dicom-web/studies", headers={"Authorization": header})
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == INVALID
    assert answer.json() == {"error": "the credential is not valid"}


@pytest.mark.parametrize(("who", "method", "path", "status"), [
    ("uploader", "GET", "/dicom-web/studies", 403),  # an uploader stores, never reads
    ("uploader", "GET", "/wado?requestType=WADO", 403),
    ("viewer", "POST", "/dicom-web/studies", 403),  # a viewer cannot store
    ("viewer", "POST", f"/api/studies/{HELD}/accept", 403),
    ("viewer", "POST", f"/dicom-web/studies/{HELD}/reject/113001%5EDCM", 403),
    ("viewer", "GET", "/api/qa", 403),
    ("viewer", "GET", "/api/audit", 403),
    ("qa", "GET", "/api/jobs", 403),  # jobs are the admin's
    ("qa", "POST", "/api/jobs/1/retry", 403),
    ("viewer", "GET", "/dicom-web/studies", 200),
    ("qa", "GET", "/dicom-web/studies", 200),  # qa includes viewer
    ("admin", "GET", "/dicom-web/studies", 200),  # admin includes everything
    ("qa", "GET", "/api/qa", 200),
    ("qa", "GET", "/api/audit", 200),
    ("admin", "GET", "/api/jobs", 200),
])
def test_roles(site: Site, who: str, method: str, path: str, status: int) -> None:
    answer = site.call(method, path, who)
    assert answer.status_code == status, answer.text
    if status == 403:
        assert answer.headers["www-authenticate"] == ('Bearer realm="pacs", '
                                                      'error="insufficient_scope"')
        assert answer.json()["error"].startswith("this needs the ")


def test_qa_accepts_and_rejects_an_uploader_stores_with_stow(site: Site) -> None:
    held = make_uid("auth", "held-2")
    body, headers = _stow_body(ct_instance(PatientID="AUTH-3", StudyInstanceUID=held))
    stored = site.call("POST", "/dicom-web/studies", "uploader", content=body,
                       headers=headers)
    assert stored.status_code == 200, stored.text
    assert site.call("POST", f"/api/studies/{held}/accept", "qa").json()["state"] == "archived"
    rejected = site.call("POST", f"/dicom-web/studies/{held}/reject/113001%5EDCM", "qa")
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["state"] == "rejected"


def test_dicomweb_client_sends_the_bearer_token(site: Site) -> None:
    def client(who: str) -> DICOMwebClient:
        return DICOMwebClient(site.url("/dicom-web"), headers=bearer(site.tokens[who]))

    found = client("viewer").search_for_studies(search_filters={"PatientID": "AUTH-1"})
    assert [study["0020000D"]["Value"][0] for study in found] == [ARCHIVED]
    instance = ct_instance(PatientID="AUTH-4", StudyInstanceUID=make_uid("auth", "client"))
    client("uploader").store_instances([instance])
    with pytest.raises(HTTPError) as refused:
        client("viewer").store_instances([instance])
    assert refused.value.response.status_code == 403
    with pytest.raises(HTTPError) as unauthenticated:
        DICOMwebClient(site.url("/dicom-web")).search_for_studies()
    assert unauthenticated.value.response.status_code == 401


def test_every_audit_row_from_http_names_the_principal(site: Site) -> None:
    site.call("GET", "/dicom-web/studies", "viewer", params={"PatientID": "AUTH-1"})
    site.call("GET", f"/dicom-web/studies/{ARCHIVED}", "viewer",
              headers={"Accept": 'multipart/related; type="application/dicom"'})
    body, headers = _stow_body(ct_instance(PatientID="AUTH-5",
                                           StudyInstanceUID=make_uid("auth", "actor")))
    assert site.call("POST", "/dicom-web/studies", "uploader", content=body,
                     headers=headers).status_code == 200

    queries = until("the viewer's QIDO-RS query audited", lambda: [
        e for e in site.events("query") if e["actor"] == "http:token:viewer@127.0.0.1"])
    assert queries[0]["detail"]["how"] == "QIDO-RS"
    retrievals = site.events("retrieve")
    assert any(e["actor"] == "http:token:viewer@127.0.0.1" for e in retrievals), retrievals
    stores = [e for e in site.events("store") if e["actor"].startswith("dicomweb:")]
    assert stores and all(e["actor"].startswith("dicomweb:token:uploader@127.0.0.1:")
                          for e in stores), stores
    accepts = site.events("accept")
    assert accepts and all(e["actor"] == "http:token:qa@127.0.0.1" for e in accepts), accepts


def test_refusals_are_audited_without_secrets(site: Site) -> None:
    site.call("GET", "/dicom-web/series")
    site.call("GET", "/dicom-web/series", headers={"Authorization": "Bearer wrong-secret"})
    site.call("GET", "/api/qa", "uploader")

    failed = until("auth failures audited", lambda: (
        lambda found: found if {e["detail"]["reason"] for e in found} >= {"missing", "invalid"}
        else None)(site.events("auth-failed")))
    assert {e["actor"] for e in failed} == {"http:127.0.0.1"}
    assert all(e["detail"]["count"] >= 1 for e in failed)
    (denied,) = until("the permission denial audited", lambda: [
        e for e in site.events("permission-denied")
        if e["actor"] == "http:token:uploader@127.0.0.1" and e["detail"]["needed"] == "qa"])
    assert denied["outcome"] == "needs qa"
    assert denied["detail"]["path"] == "/api/qa"
    assert denied["detail"]["method"] == "GET"
    everything = site.call("GET", "/api/audit", "admin", params={"limit": 10000}).text
    assert "wrong-secret" not in everything
    assert not any(secret in everything for secret in site.tokens.values())


def test_cors_preflight_needs_no_token_and_allows_the_authorization_header(site: Site) -> None:
    answer = site.call("OPTIONS", "/dicom-web/studies", headers={
        "Origin": VIEWER_ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    read = site.call("GET", "/dicom-web/studies", "viewer", headers={"Origin": VIEWER_ORIGIN})
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == VIEWER_ORIGIN


def test_a_ui_page_without_a_session_sends_the_browser_to_sign_in(site: Site) -> None:
    answer = site.call("GET", "/ui/qa?x=1", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/sign-in?next=%2Fui%2Fqa%3Fx%3D1"


def test_a_revoked_token_stops_working_within_seconds(site: Site) -> None:
    """Verified tokens are remembered for a few seconds (bench/RESULTS-auth.md): a token
    revoked while in use is refused once that is over, by every server."""
    secret = token(site.server, "soon-revoked", "viewer")
    assert site.call("GET", "/dicom-web/studies", headers=bearer(secret)).status_code == 200
    assert site.server.cli("token", "revoke", "soon-revoked").returncode == 0
    refused = until("the revoked token refused", lambda: (
        lambda answer: answer if answer.status_code == 401 else None)(
            site.call("GET", "/dicom-web/studies", headers=bearer(secret))), timeout=30)
    assert refused.headers["www-authenticate"] == INVALID


def test_verified_tokens_are_kept_for_a_few_seconds_only() -> None:
    now = [100.0]
    kept = VerifiedTokens(ttl=5.0, max_entries=2, clock=lambda: now[0])
    viewer = Principal.of("viewer", Role.VIEWER)
    kept.put("pacs_a", viewer)
    assert kept.get("pacs_a") == viewer
    assert kept.get("pacs_b") is None
    now[0] += 4.9
    assert kept.get("pacs_a") == viewer
    now[0] += 0.1
    assert kept.get("pacs_a") is None  # asked of the index again
    kept.put("pacs_a", viewer)
    kept.put("pacs_b", viewer)
    kept.put("pacs_c", viewer)  # full: starts over
    assert kept.get("pacs_a") is None and kept.get("pacs_c") == viewer
