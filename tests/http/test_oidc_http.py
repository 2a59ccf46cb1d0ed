"""OIDC bearer tokens end to end, against a real ``pacs serve --auth required --oidc-issuer ...
--oidc-audience pacs``, with keys and tokens the tests make (tests/support/oidc.py): the
issuer's keys from a JWKS file, or from a loopback issuer by discovery with Keycloak's
``realm_access.roles``; roles from the token decide (viewer reads, cannot store), refused
tokens answer 401 ``invalid_token`` and the audit says why (never the token), a token with no
known role is 403, the audit names ``http:oidc:SUBJECT@ADDRESS``, and the web UI's sign-in
takes a pasted OIDC token (in headless Chromium), its session ending with the token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from playwright.sync_api import Page, expect
from requests import HTTPError

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.browser import launched
from tests.support.oidc import (
    AUDIENCE,
    ISSUER,
    LoopbackIssuer,
    SigningKey,
    claims,
    hmac_token,
    signing_key,
    unsigned_token,
    write_jwks,
)
from tests.support.server import PacsServer, bearer, token
from tests.support.wait import until

ARCHIVED = make_uid("oidc-http", "archived")
HELD = make_uid("oidc-http", "held")
INVALID = 'Bearer realm="pacs", error="invalid_token"'


@dataclass
class Site:
    server: PacsServer
    key: SigningKey
    issuer: str
    admin: str  # an API token, for reading the audit trail
    workdir: Path

    def token(self, subject: str = "alice", roles: list[str] | None = None,
              **extra: Any) -> str:
        return self.key.sign(claims(self.issuer, subject=subject,
                                    roles=["viewer"] if roles is None else roles, **extra))

    def get(self, path: str, credential: str | None, **kwargs: Any) -> httpx.Response:
        headers = bearer(credential) if credential is not None else {}
        return httpx.get(f"{self.server.base_url}{path}", headers=headers, timeout=30,
                         **kwargs)

    def events(self, action: str) -> list[dict[str, Any]]:
        answer = self.get("/api/audit", self.admin, params={"action": action, "limit": 10000})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found


def _server(root: Path, *args: str) -> PacsServer:
    return PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
                      extra_args=["--auth", "required", "--dimse-processes", "1",
                                  "--oidc-audience", AUDIENCE, *args])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Keys from a JWKS file (the issuer is never contacted), roles from ``roles``."""
    root = tmp_path_factory.mktemp("oidc-http")
    key = signing_key("rsa")
    jwks_file = write_jwks(root / "jwks.json", key)
    server = _server(root, "--qa", "manual", "--oidc-issuer", ISSUER,
                     "--oidc-jwks-file", str(jwks_file))
    admin = token(server, "admin", "admin")
    server.start()
    try:
        dcmtk.store_datasets(server.dimse_port, [
            ct_instance(PatientID="OIDC-1", PatientName="Oidc^One", StudyInstanceUID=ARCHIVED),
            ct_instance(PatientID="OIDC-2", PatientName="Oidc^Two", StudyInstanceUID=HELD),
        ], workdir=root)
        accepted = httpx.post(f"{server.base_url}/api/studies/{ARCHIVED}/accept",
                              headers=bearer(admin), timeout=30)
        assert accepted.status_code == 200, accepted.text
        yield Site(server, key, ISSUER, admin, root)
    finally:
        server.stop()


def _found(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [study["0020000D"]["Value"][0] for study in answer.json()]


def test_a_viewer_token_reads_and_cannot_store(site: Site) -> None:
    viewer = site.token("vera", ["viewer"])
    assert _found(site.get("/dicom-web/studies", viewer)) == [ARCHIVED]
    client = DICOMwebClient(f"{site.server.base_url}/dicom-web", headers=bearer(viewer))
    with pytest.raises(HTTPError) as refused:
        client.store_instances([ct_instance(StudyInstanceUID=make_uid("oidc-http", "stow"))])
    assert refused.value.response.status_code == 403
    assert site.get("/api/qa", viewer).status_code == 403
    uploader = site.token("uma", ["uploader"])
    DICOMwebClient(f"{site.server.base_url}/dicom-web", headers=bearer(uploader)) \
        .store_instances([ct_instance(StudyInstanceUID=make_uid("oidc-http", "stow"))])


def test_the_audit_names_the_oidc_subject(site: Site) -> None:
    assert site.get("/dicom-web/studies", site.token("quentin", ["viewer"]),
                    params={"PatientID": "OIDC-1"}).status_code == 200
    queries = until("the query audited", lambda: [
        e for e in site.events("query") if e["actor"] == "http:oidc:quentin@127.0.0.1"])
    assert queries[0]["detail"]["how"] == "QIDO-RS"

    reviewer = site.token("rita", ["qa"])
    accepted = httpx.post(f"{site.server.base_url}/api/studies/{HELD}/accept",
                          headers=bearer(reviewer), timeout=30)
    assert accepted.status_code == 200, accepted.text
    accepts = [e for e in site.events("accept") if e["study_instance_uid"] == HELD]
    assert [e["actor"] for e in accepts] == ["http:oidc:rita@127.0.0.1"]


def _refused_kinds(site: Site) -> dict[str, tuple[str, str]]:
    """Tokens the server must refuse: name -> (token, the reason the audit gives)."""
    other = signing_key("rsa", kid=site.key.kid)  # same key id, another key
    good = claims(site.issuer, subject="mallory")
    return {
        "expired": (site.token("mallory", lifetime=-120), "expired"),  # beyond 60 s of skew
        "wrong audience": (site.key.sign(claims(site.issuer, "another-service",
                                                subject="mallory")), "wrong audience"),
        "wrong issuer": (site.key.sign(claims("https://evil.example/realms/test",
                                              subject="mallory")), "wrong issuer"),
        "alg none": (unsigned_token(good, kid=site.key.kid), "algorithm not allowed"),
        "HS256 with the public key": (hmac_token(good, site.key.public_pem(),
                                                 kid=site.key.kid), "algorithm not allowed"),
        "another key": (other.sign(good), "bad signature"),
        "unknown key id": (site.key.sign(good, kid="nobody's"), "unknown key"),
        "not a JWT": ("eyJhbGciOiJSUzI1NiJ9.garbage", "malformed"),
    }


def test_refused_tokens_are_401_invalid_token_and_audited_with_the_reason(site: Site) -> None:
    kinds = _refused_kinds(site)
    for name, (refused, _reason) in kinds.items():
        answer = site.get("/dicom-web/studies", refused)
        assert answer.status_code == 401, (name, answer.text)
        assert answer.headers["www-authenticate"] == INVALID, name
        assert answer.json() == {"error": "the credential is not valid"}, name

    wanted = {f"invalid: {reason}" for _token, reason in kinds.values()}

    def audited() -> list[dict[str, Any]] | None:
        found = [e for e in site.events("auth-failed") if e["detail"]["reason"] in wanted]
        return found if {e["detail"]["reason"] for e in found} == wanted else None

    failed = until("every refusal reason audited", audited)
    assert {e["actor"] for e in failed} == {"http:127.0.0.1"}
    assert {e["outcome"] for e in failed} == {f"invalid credential: {reason}"
                                              for _token, reason in kinds.values()}
    everything = site.get("/api/audit", site.admin, params={"limit": 10000}).text
    log = site.server.log()
    for name, (refused, _reason) in kinds.items():
        signature = refused.rsplit(".", 1)[-1] or refused
        assert signature not in everything and refused not in log, name


def test_a_token_with_no_known_role_is_403_and_audited(site: Site) -> None:
    nobody = site.token("norole", ["nurse", "Viewer"])  # names match exactly, or not at all
    answer = site.get("/dicom-web/studies", nobody)
    assert answer.status_code == 403, answer.text
    assert answer.headers["www-authenticate"] == ('Bearer realm="pacs", '
                                                  'error="insufficient_scope"')
    (denied,) = until("the denial audited", lambda: [
        e for e in site.events("permission-denied")
        if e["actor"] == "http:oidc:norole@127.0.0.1"])
    assert denied["detail"]["needed"] == "viewer"
    assert denied["detail"]["path"] == "/dicom-web/studies"


def test_an_api_token_still_works_beside_oidc(site: Site) -> None:
    assert site.get("/api/tokens", site.admin).status_code == 200
    # an unknown API token is not handed to the OIDC verifier, and its refusal says no more
    fake = "pacs_000000000000_notasecretnotasecretnotasecretnotasecret00"
    assert site.get("/dicom-web/studies", fake).status_code == 401


# -- the web UI ------------------------------------------------------------------------------


def _sign_in(http: httpx.Client, credential: str) -> httpx.Response:
    form = http.get("/ui/sign-in")
    assert form.status_code == 200, form.text
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    return http.post("/ui/sign-in", data={"token": credential, "csrf": csrf})


def test_a_ui_session_opened_with_an_oidc_token_ends_with_it(site: Site) -> None:
    """The session lasts no longer than the token it was opened with (its ``exp``), not the
    12 hours of a session opened with an API token."""
    short = site.token("shortly", ["viewer"], lifetime=3)
    with httpx.Client(base_url=site.server.base_url, timeout=30) as http:
        signed = _sign_in(http, short)
        assert signed.status_code == 303, signed.text
        assert http.get("/ui/studies").status_code == 200
        until("the session ended with the token", lambda: (
            lambda answer: answer.status_code == 303
            and answer.headers["location"].startswith("/ui/sign-in"))(
                http.get("/ui/studies")), timeout=60)


def test_the_ui_refuses_an_expired_or_roleless_oidc_token(site: Site) -> None:
    with httpx.Client(base_url=site.server.base_url, timeout=30) as http:
        expired = _sign_in(http, site.token("late", lifetime=-120))
        assert expired.status_code == 401
        assert "not valid" in expired.text
        roleless = _sign_in(http, site.token("nobody", ["nurse"]))
        assert roleless.status_code == 403
        assert "no role here" in roleless.text
        assert "pacs_session" not in http.cookies
    until("the sign-in refusal audited with its reason", lambda: [
        e for e in site.events("auth-failed")
        if e["detail"]["reason"] == "invalid: expired" and e["detail"]["path"] == "/ui/sign-in"])


def test_signing_in_to_the_ui_with_a_pasted_oidc_token(site: Site) -> None:
    secret = site.token("olivia", ["qa"])
    with launched() as browser:
        context = browser.new_context(base_url=site.server.base_url)
        page: Page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            page.goto("/ui/qa")
            expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
            page.get_by_label("API token or OIDC access token").fill(secret)
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#signed-in-as")).to_contain_text("Signed in as olivia")
            expect(page.locator("#signed-in-as")).to_contain_text("qa")
            navigation = page.get_by_role("navigation", name="Main")
            expect(navigation.get_by_role("link")).to_have_text(
                ["Studies", "QA queue", "Worklist", "Audit"])
            (cookie,) = [c for c in context.cookies() if c["name"] == "pacs_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        finally:
            context.close()
    sign_ins = [e for e in site.events("sign-in") if e["actor"] == "http:oidc:olivia@127.0.0.1"]
    assert len(sign_ins) == 1
    assert secret not in site.server.log()


# -- keys by discovery, roles from Keycloak's realm_access.roles ---------------------------


@pytest.fixture(scope="module")
def keycloak_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("oidc-realm")
    key = signing_key("ec")
    with LoopbackIssuer(key) as idp:
        server = _server(root, "--oidc-issuer", idp.issuer,
                         "--oidc-role-claim", "realm_access.roles")
        admin = token(server, "admin", "admin")
        server.start()
        try:
            dcmtk.store_datasets(server.dimse_port, [ct_instance(
                PatientID="OIDC-3", StudyInstanceUID=ARCHIVED)], workdir=root)
            yield Site(server, key, idp.issuer, admin, root)
        finally:
            server.stop()


def test_roles_from_realm_access_with_keys_from_the_issuer(keycloak_like: Site) -> None:
    site = keycloak_like

    def realm(subject: str, *roles: str, top_level: list[str] | None = None,
              **extra: Any) -> str:
        return site.token(subject, top_level or [], realm_access={"roles": list(roles)},
                          **extra)

    assert _found(site.get("/dicom-web/studies", realm("kim", "viewer", "offline_access"))
                  ) == [ARCHIVED]
    assert site.get("/api/qa", realm("kim", "viewer")).status_code == 403
    assert site.get("/api/qa", realm("kai", "qa")).status_code == 200
    # the roles claim is not read when the role claim is realm_access.roles
    assert site.get("/dicom-web/studies",
                    realm("kurt", top_level=["viewer"])).status_code == 403
    assert site.get("/dicom-web/studies",
                    realm("kim", "viewer", aud="account")).status_code == 401
