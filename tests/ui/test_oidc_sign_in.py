"""Signing in to the web UI at the OpenID Connect identity provider (authorization-code flow
with PKCE), in headless Chromium against a real ``pacs serve`` and the loopback issuer of
:mod:`tests.support.oidc`, which consents at once.

The browser reaches pacs as ``http://pacs.test:PORT`` (mapped to 127.0.0.1 inside Chromium)
and the issuer as ``http://127.0.0.1:PORT``: two sites, so the identity provider's redirect
back is a cross-site navigation, as in real life, and the cookies' SameSite rules apply."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.browser import ARTIFACTS, launched
from tests.support.oidc import CLIENT_ID, Login, LoopbackIssuer, s256, signing_key
from tests.support.server import PacsServer, bearer, token
from tests.support.wait import until

HOST = "pacs.test"  # the name the browser uses for pacs (Chromium maps it to 127.0.0.1)
ARCHIVED = make_uid("oidc-sign-in", "archived")


@dataclass
class Site:
    server: PacsServer
    idp: LoopbackIssuer
    admin: str
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.http_port}"

    @property
    def provider(self) -> str:
        return f"127.0.0.1:{self.idp.port}/realms/test"

    def held(self, tag: str) -> str:
        """A new study waiting for review (the server runs --qa manual)."""
        study = make_uid("oidc-sign-in", tag)
        dcmtk.store_datasets(self.server.dimse_port, [ct_instance(
            PatientID=f"OIDC-{tag}", PatientName=f"Held^{tag}", StudyInstanceUID=study)],
            workdir=self.workdir)
        return study

    def audit(self, action: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.server.base_url}/api/audit", params={"action": action},
                           headers=bearer(self.admin), timeout=30)
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found

    def wait_refused(self, reason: str) -> None:
        """Until an auth-failed event with this reason is in the audit trail (refusals are
        counted and written by a background writer)."""
        until(f"an auth-failed event: {reason}", lambda: any(
            (event.get("detail") or {}).get("reason") == reason
            for event in self.audit("auth-failed")))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("oidc-sign-in")
    with LoopbackIssuer(signing_key("rsa")) as idp:
        server = PacsServer(
            data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
            extra_args=["--auth", "required", "--qa", "manual", "--dimse-processes", "1",
                        "--oidc-issuer", idp.issuer, "--oidc-audience", "pacs",
                        "--oidc-client-id", CLIENT_ID])
        admin = token(server, "admin", "admin")
        server.start()
        try:
            dcmtk.store_datasets(server.dimse_port, [ct_instance(
                PatientID="OIDC-A", PatientName="Archived^Olga", StudyInstanceUID=ARCHIVED)],
                workdir=root)
            accepted = httpx.post(f"{server.base_url}/api/studies/{ARCHIVED}/accept",
                                  headers=bearer(admin), timeout=30)
            assert accepted.status_code == 200, accepted.text
            yield Site(server, idp, admin, root)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched(f"--host-resolver-rules=MAP {HOST} 127.0.0.1", "--no-proxy-server") as started:
        yield started


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    site.idp.login = Login()
    made = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 800})
    made.set_default_timeout(30_000)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def start(page: Page, site: Site, path: str = "/ui/studies") -> None:
    """Open ``path``, land on the sign-in page, and click the identity provider's button."""
    page.goto(path)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_role("link", name=f"Sign in with {site.provider}").click()


def cookies(context: BrowserContext, name: str) -> list[dict[str, Any]]:
    return [dict(c) for c in context.cookies() if c["name"] == name]


def start_held(page: Page, site: Site) -> str:
    """Start signing in, but stop at the identity provider's consent page: the callback URL
    it would send the browser to, with its state and code."""
    site.idp.login = Login(consent_page=True)
    start(page, site)
    expect(page.locator("#consent")).to_be_visible()
    return site.idp.callbacks[-1]


def test_a_qa_reviewer_signs_in_at_the_identity_provider(site: Site, context: BrowserContext,
                                                         page: Page) -> None:
    held = site.held("qa")
    # a consent page: the way back is a navigation the identity provider's site starts,
    # which sends no Strict cookie, as after a real sign-in there
    site.idp.login = Login(subject="rita", roles=["qa"], consent_page=True)
    before = len(site.idp.authorizations)
    start(page, site, "/ui/qa")
    page.locator("#consent").click()

    # back on the page asked for, signed in as the token's subject with its role
    expect(page.get_by_role("heading", level=1)).to_contain_text("QA queue")
    assert urlsplit(page.url).path == "/ui/qa"
    expect(page.locator("#signed-in-as")).to_contain_text("Signed in as rita")
    expect(page.locator("#signed-in-as")).to_contain_text("(qa)")
    card = page.locator(f'article[data-study="{held}"]')
    expect(card.get_by_role("button", name="Accept")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "oidc-signed-in-qa.png"), full_page=True)

    # the authorization request: the code flow with an S256 challenge of the verifier the
    # token request gave (the issuer refuses a code whose verifier does not match)
    (asked,) = site.idp.authorizations[before:]
    assert asked["response_type"] == "code"
    assert asked["client_id"] == CLIENT_ID
    assert asked["scope"] == "openid"
    assert asked["redirect_uri"] == f"{site.url}/ui/sign-in/callback"
    assert asked["code_challenge_method"] == "S256"
    assert len(asked["state"]) >= 43 and len(asked["nonce"]) >= 43
    exchanged = site.idp.token_requests[-1]
    assert exchanged["grant_type"] == "authorization_code"
    assert exchanged["client_id"] == CLIENT_ID
    assert exchanged["redirect_uri"] == asked["redirect_uri"]
    assert 43 <= len(exchanged["code_verifier"]) <= 128
    assert s256(exchanged["code_verifier"]) == asked["code_challenge"]
    assert "authorization" not in exchanged  # a public client: no secret

    # the session cookie is the one a pasted token gets; the PKCE cookie is gone
    (session,) = cookies(context, "pacs_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["secure"] is False  # plain HTTP here
    assert session["path"] == "/"
    assert session["expires"] == -1
    assert not cookies(context, "pacs_oidc")
    log = site.server.log()
    assert session["value"] not in log and exchanged["code"] not in log
    assert exchanged["code_verifier"] not in log

    # the reviewer may accept, as themselves in the audit trail
    card.get_by_role("button", name="Accept").click()
    expect(page.locator("main .notice").first).to_contain_text("Accepted")
    accepts = [e for e in site.audit("accept") if e["study_instance_uid"] == held]
    assert [e["actor"] for e in accepts] == ["http:oidc:rita@127.0.0.1"]
    assert any(e["actor"] == "http:oidc:rita@127.0.0.1" for e in site.audit("sign-in"))


def test_the_pkce_cookie_is_lax_http_only_and_kept_to_the_callback(
        site: Site, context: BrowserContext, page: Page) -> None:
    callback = start_held(page, site)
    (pkce,) = cookies(context, "pacs_oidc")
    assert pkce["httpOnly"] is True
    assert pkce["sameSite"] == "Lax"  # sent with the identity provider's cross-site redirect
    assert pkce["path"] == "/ui/sign-in/callback"
    assert pkce["expires"] > 0  # minutes, not the browser's session
    asked = site.idp.authorizations[-1]
    assert asked["code_challenge"] == s256(pkce["value"])
    assert pkce["value"] not in callback  # the verifier travels in no URL


def test_a_viewer_signed_in_at_the_identity_provider_may_not_review(
        site: Site, page: Page) -> None:
    held = site.held("viewer")
    site.idp.login = Login(subject="victor", roles=["viewer"])
    start(page, site, f"/ui/studies/{ARCHIVED}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Archived^Olga")
    expect(page.locator("#signed-in-as")).to_contain_text("Signed in as victor")
    expect(page.get_by_role("button", name="Accept")).to_have_count(0)
    answer = page.goto("/ui/qa")
    assert answer is not None and answer.status == 403
    answer = page.goto(f"/ui/studies/{held}")
    assert answer is not None and answer.status == 404  # not archived: invisible to a viewer


def test_a_forged_state_is_refused(site: Site, context: BrowserContext, page: Page) -> None:
    answer = page.goto("/ui/sign-in/callback?code=made-up&state=" + "f" * 43)
    assert answer is not None and answer.status == 401
    expect(page.get_by_role("alert")).to_contain_text("unknown, was used already")
    assert not cookies(context, "pacs_session")
    site.wait_refused("unknown, used or expired state")


def test_a_replayed_callback_is_refused(site: Site, context: BrowserContext,
                                        page: Page) -> None:
    callbacks: list[str] = []
    page.on("request", lambda request: callbacks.append(request.url)
            if "/ui/sign-in/callback" in request.url else None)
    start(page, site)
    expect(page.locator("#signed-in-as")).to_contain_text("Signed in as alice")
    (callback,) = callbacks
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")

    exchanged = len(site.idp.token_requests)
    answer = page.goto(callback)  # the same code and state again
    assert answer is not None and answer.status == 401
    expect(page.get_by_role("alert")).to_contain_text("unknown, was used already")
    assert not cookies(context, "pacs_session")
    assert len(site.idp.token_requests) == exchanged  # refused before the code is tried
    page.goto("/ui/qa")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")


def test_a_callback_in_another_browser_is_refused(site: Site, browser: Browser,
                                                  context: BrowserContext,
                                                  page: Page) -> None:
    """Login CSRF: a callback URL with a genuine state and code, opened in a browser that
    did not start that sign-in (no PKCE cookie), opens no session there."""
    callback = start_held(page, site)
    requests = len(site.idp.token_requests)
    other = browser.new_context(base_url=site.url)
    try:
        victim = other.new_page()
        answer = victim.goto(callback)
        assert answer is not None and answer.status == 401
        expect(victim.get_by_role("alert")).to_contain_text("another browser")
        assert not cookies(other, "pacs_session")
    finally:
        other.close()
    assert len(site.idp.token_requests) == requests  # the code was never exchanged
    site.wait_refused("no or wrong PKCE verifier cookie")
    # and the state is spent: the browser that started it cannot use it any more either
    context.unroute("**/ui/sign-in/callback*")
    answer = page.goto(callback)
    assert answer is not None and answer.status == 401
    assert not cookies(context, "pacs_session")


def test_an_identity_provider_error_is_shown(site: Site, context: BrowserContext,
                                             page: Page) -> None:
    site.idp.login = Login(error="access_denied")
    start(page, site)
    expect(page.get_by_role("alert")).to_contain_text(
        "The identity provider did not sign you in (access_denied)")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    assert not cookies(context, "pacs_session")
    assert not cookies(context, "pacs_oidc")
    site.wait_refused("identity provider answered access_denied")


def test_a_token_for_another_audience_is_refused(site: Site, context: BrowserContext,
                                                 page: Page) -> None:
    site.idp.login = Login(subject="mallory", roles=["admin"],
                           access_claims={"aud": "another-service"})
    start(page, site)
    expect(page.get_by_role("alert")).to_contain_text("not accepted by this server")
    assert not cookies(context, "pacs_session")
    content = page.content()
    assert "another-service" not in content and "eyJ" not in content  # no token, no detail
    site.wait_refused("access token: wrong audience")
    assert not any("mallory" in e["actor"] for e in site.audit("sign-in"))


def test_an_id_token_with_another_nonce_is_refused(site: Site, context: BrowserContext,
                                                   page: Page) -> None:
    site.idp.login = Login(subject="mallory", roles=["qa"],
                           id_claims={"nonce": hashlib.sha256(b"replayed").hexdigest()})
    start(page, site)
    expect(page.get_by_role("alert")).to_contain_text("not accepted by this server")
    assert not cookies(context, "pacs_session")
    site.wait_refused("ID token: wrong nonce")


def test_the_sign_in_page_offers_the_identity_provider_only_when_configured(
        site: Site, tmp_path: Path) -> None:
    page = httpx.get(f"{site.server.base_url}/ui/sign-in", timeout=30)
    assert f"Sign in with {site.provider}" in page.text
    started = httpx.get(f"{site.server.base_url}/ui/sign-in/oidc?next=/ui/qa", timeout=30)
    assert started.status_code == 303
    location = urlsplit(started.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == site.idp.issuer + "/auth"
    assert parse_qs(location.query)["redirect_uri"] == [
        f"{site.server.base_url}/ui/sign-in/callback"]  # from the request's Host

    plain = PacsServer(data_dir=tmp_path / "data",
                       database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
                       extra_args=["--auth", "required", "--dimse-processes", "1",
                                   "--oidc-issuer", site.idp.issuer, "--oidc-audience", "pacs"])
    plain.start()
    try:
        form = httpx.get(f"{plain.base_url}/ui/sign-in", timeout=30)
        assert "Sign in with" not in form.text
        assert "OIDC access token" in form.text  # pasting one still works
        assert httpx.get(f"{plain.base_url}/ui/sign-in/oidc", timeout=30).status_code == 404
    finally:
        plain.stop()


def test_an_identity_without_a_pacs_role_is_refused(site: Site, context: BrowserContext,
                                                    page: Page) -> None:
    site.idp.login = Login(subject="nina", roles=["nurse"])
    with page.expect_response(lambda r: "/ui/sign-in/callback" in r.url) as callback:
        start(page, site)
    assert callback.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("no role here")
    assert not cookies(context, "pacs_session")
    assert not any("nina" in e["actor"] for e in site.audit("sign-in"))
