"""The authorization-code flow with PKCE behind the web UI's "Sign in with <issuer>", on a real
index (SQLite and PostgreSQL) against the loopback issuer of :mod:`tests.support.oidc` (the
browser's part, following the redirect to the authorization endpoint and back, done with
httpx): PKCE values (RFC 7636), what is kept and where, one use of a state, expiry, the
checks of the callback, the token request and the tokens, a confidential client, the
endpoints' discovery and its bounds, and the settings."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import string
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from pacs import serve as root
from pacs.services.auth import Principal, Role
from pacs.services.errors import SignInRefused
from pacs.services.oidc import IssuerKeys, KeySetError, OidcVerifier, post_form
from pacs.services.oidc_sign_in import (
    PENDING,
    Authorization,
    OidcSignIn,
    ProviderEndpoints,
    code_challenge,
    code_verifier,
)
from pacs.settings import Settings
from storage.index import Index
from tests.support.oidc import (
    AUDIENCE,
    CLIENT_ID,
    Login,
    LoopbackIssuer,
    SigningKey,
    s256,
    signing_key,
)

CALLBACK = "http://pacs.example.org:8042/ui/sign-in/callback"
T0 = dt.datetime(2026, 12, 9, 8, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return signing_key("rsa")


@pytest.fixture
def idp(key: SigningKey) -> Iterator[LoopbackIssuer]:
    with LoopbackIssuer(key) as issuer:
        yield issuer


def sign_in(index: Index, idp: LoopbackIssuer, **options: Any) -> OidcSignIn:
    access = OidcVerifier(issuer=idp.issuer, audience=AUDIENCE, keys=IssuerKeys(idp.issuer))
    return OidcSignIn(index=index, issuer=idp.issuer, client_id=CLIENT_ID, access=access,
                      **options)


def consent(started: Authorization) -> dict[str, str]:
    """The browser's part: to the authorization endpoint, which sends it back at once; the
    callback's parameters."""
    answer = httpx.get(started.url, follow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    return {name: values[0] for name, values in parse_qs(location.query).items()}


def refusal(call: Any) -> SignInRefused:
    with pytest.raises(SignInRefused) as refused:
        call()
    return refused.value


def pending_rows(index: Index) -> list[Any]:
    with index.engine.connect() as connection:
        return list(connection.execute(text("SELECT * FROM ui_sign_in")).mappings())


# --- PKCE values (RFC 7636) -----------------------------------------------------------------


def test_the_s256_challenge_is_rfc_7636s() -> None:
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # Appendix B


def test_code_verifiers_are_long_random_and_unreserved() -> None:
    made = {code_verifier() for _ in range(200)}
    assert len(made) == 200
    unreserved = set(string.ascii_letters + string.digits + "-._~")
    for verifier in made:
        assert 43 <= len(verifier) <= 128 and set(verifier) <= unreserved
        assert len(code_challenge(verifier)) == 43 and "=" not in code_challenge(verifier)


# --- start ------------------------------------------------------------------------------------


def test_start_asks_for_a_code_with_an_s256_challenge_and_keeps_no_secret(
        index: Index, idp: LoopbackIssuer) -> None:
    started = sign_in(index, idp, clock=Clock()).start(callback_url=CALLBACK,
                                                       next_path="/ui/qa")
    endpoint, _, query = started.url.partition("?")
    assert endpoint == idp.issuer + "/auth"
    asked = {name: values[0] for name, values in parse_qs(query).items()}
    assert {name: asked[name] for name in ("response_type", "client_id", "redirect_uri",
                                           "scope", "code_challenge_method")} == {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK,
        "scope": "openid", "code_challenge_method": "S256"}
    assert asked["code_challenge"] == s256(started.verifier)
    assert started.max_age == PENDING.total_seconds()

    (row,) = pending_rows(index)
    assert row["state_sha256"] == hashlib.sha256(asked["state"].encode()).hexdigest()
    assert row["nonce"] == asked["nonce"] and row["code_challenge"] == asked["code_challenge"]
    assert (row["redirect_uri"], row["next_path"]) == (CALLBACK, "/ui/qa")
    stored = json.dumps({k: str(v) for k, v in row.items()})
    assert asked["state"] not in stored and started.verifier not in stored


def test_every_start_has_its_own_state_nonce_and_verifier(index: Index,
                                                          idp: LoopbackIssuer) -> None:
    flow = sign_in(index, idp)
    urls = [flow.start(callback_url=CALLBACK, next_path="/ui/studies") for _ in range(3)]
    params = [parse_qs(urlsplit(started.url).query) for started in urls]
    for name in ("state", "nonce", "code_challenge"):
        assert len({values[name][0] for values in params}) == 3
    assert len(pending_rows(index)) == 3


def test_a_configured_redirect_uri_is_used_and_an_endpoints_query_kept(
        index: Index, idp: LoopbackIssuer) -> None:
    idp.discovery = {"authorization_endpoint": idp.issuer + "/auth?kc_idp_hint=hospital"}
    configured = "https://pacs.hospital.example/ui/sign-in/callback"
    started = sign_in(index, idp, redirect_uri=configured).start(callback_url=CALLBACK,
                                                                 next_path="/")
    asked = parse_qs(urlsplit(started.url).query)
    assert asked["redirect_uri"] == [configured]
    assert asked["kc_idp_hint"] == ["hospital"]


def test_ended_sign_ins_are_cleared_at_the_next_start(index: Index,
                                                      idp: LoopbackIssuer) -> None:
    clock = Clock()
    flow = sign_in(index, idp, clock=clock)
    flow.start(callback_url=CALLBACK, next_path="/")
    clock.now += PENDING
    flow.start(callback_url=CALLBACK, next_path="/ui/qa")
    assert [row["next_path"] for row in pending_rows(index)] == ["/ui/qa"]


def test_no_more_than_so_many_sign_ins_are_under_way(index: Index,
                                                     idp: LoopbackIssuer) -> None:
    clock = Clock()
    flow = sign_in(index, idp, clock=clock, max_pending=2)
    for _ in range(2):
        flow.start(callback_url=CALLBACK, next_path="/")
    refused = refusal(lambda: flow.start(callback_url=CALLBACK, next_path="/ui/qa"))
    assert refused.reason == "too many sign-ins under way"
    assert len(pending_rows(index)) == 2
    clock.now += PENDING  # the old ones ended: room again
    flow.start(callback_url=CALLBACK, next_path="/")


# --- finish -----------------------------------------------------------------------------------


def test_a_sign_in_gives_the_access_tokens_principal(index: Index,
                                                     idp: LoopbackIssuer) -> None:
    idp.login = Login(subject="rita", roles=["qa", "not-a-role"])
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/ui/qa")
    back = consent(started)

    signed = flow.finish(state=back["state"], code=back["code"], verifier=started.verifier)

    assert signed.principal == Principal.of("rita", Role.QA, kind="oidc")
    assert signed.next_path == "/ui/qa"
    (exchanged,) = idp.token_requests
    assert exchanged["code_verifier"] == started.verifier
    assert (exchanged["grant_type"], exchanged["client_id"], exchanged["redirect_uri"]) == (
        "authorization_code", CLIENT_ID, CALLBACK)
    assert "authorization" not in exchanged and idp.token_errors == []
    assert pending_rows(index) == []


def test_a_state_is_used_once(index: Index, idp: LoopbackIssuer) -> None:
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/")
    back = consent(started)
    flow.finish(state=back["state"], code=back["code"], verifier=started.verifier)

    again = refusal(lambda: flow.finish(state=back["state"], code=back["code"],
                                        verifier=started.verifier))
    assert again.reason == "unknown, used or expired state"
    assert len(idp.token_requests) == 1  # refused before the code is tried


def test_a_forged_or_malformed_state_is_refused(index: Index, idp: LoopbackIssuer) -> None:
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/")
    for state in ("forged", "", "x" * 101, "é" * 43):
        refused = refusal(lambda state=state: flow.finish(state=state, code="c",
                                                          verifier=started.verifier))
        assert refused.reason == "unknown, used or expired state"
        assert "forged" not in str(refused)
    assert len(pending_rows(index)) == 1  # the genuine one is still there


def test_a_sign_in_that_took_too_long_is_refused(index: Index, idp: LoopbackIssuer) -> None:
    clock = Clock()
    flow = sign_in(index, idp, clock=clock)
    started = flow.start(callback_url=CALLBACK, next_path="/")
    back = consent(started)
    clock.now += PENDING
    refused = refusal(lambda: flow.finish(state=back["state"], code=back["code"],
                                          verifier=started.verifier))
    assert refused.reason == "unknown, used or expired state"
    assert pending_rows(index) == [] and idp.token_requests == []


@pytest.mark.parametrize("cookie", ["", "wrong", "A" * 64, "A" * 200])
def test_a_callback_without_the_browsers_verifier_is_refused_and_spends_the_state(
        index: Index, idp: LoopbackIssuer, cookie: str) -> None:
    """Login CSRF: another browser's genuine callback, or this one's cookie lost."""
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/ui/qa")
    back = consent(started)
    refused = refusal(lambda: flow.finish(state=back["state"], code=back["code"],
                                          verifier=cookie))
    assert refused.reason == "no or wrong PKCE verifier cookie"
    assert refused.next_path == "/ui/qa"
    assert idp.token_requests == []
    assert refusal(lambda: flow.finish(state=back["state"], code=back["code"],
                                       verifier=started.verifier)).reason == \
        "unknown, used or expired state"


def test_the_identity_providers_error_is_shown_by_its_code_only(
        index: Index, idp: LoopbackIssuer) -> None:
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/ui/qa")
    state = parse_qs(urlsplit(started.url).query)["state"][0]
    refused = refusal(lambda: flow.finish(state=state, code="", verifier=started.verifier,
                                          error="access_denied"))
    assert str(refused) == "The identity provider did not sign you in (access_denied)."
    assert refused.reason == "identity provider answered access_denied"
    assert refused.next_path == "/ui/qa"
    assert pending_rows(index) == []  # spent

    odd = refusal(lambda: flow.finish(state="", code="", verifier="",
                                      error="<b>call 555-0100</b>"))
    assert str(odd) == "The identity provider did not sign you in (error)."


def test_a_code_the_token_endpoint_refuses_is_refused(index: Index,
                                                      idp: LoopbackIssuer) -> None:
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/")
    back = consent(started)
    stolen = httpx.post(idp.issuer + "/token", data={
        "grant_type": "authorization_code", "code": back["code"], "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK, "code_verifier": started.verifier}, timeout=10)
    assert stolen.status_code == 200  # used first by someone else

    refused = refusal(lambda: flow.finish(state=back["state"], code=back["code"],
                                          verifier=started.verifier))
    assert refused.reason == "token request refused (invalid_grant)"
    assert "invalid_grant" not in str(refused) and back["code"] not in str(refused)


def _finished(index: Index, idp: LoopbackIssuer, login: Login) -> Principal:
    idp.login = login
    flow = sign_in(index, idp)
    started = flow.start(callback_url=CALLBACK, next_path="/")
    back = consent(started)
    return flow.finish(state=back["state"], code=back["code"],
                       verifier=started.verifier).principal


@pytest.mark.parametrize(("login", "reason"), [
    (Login(access_claims={"aud": "another-service"}), "access token: wrong audience"),
    (Login(access_claims={"iss": "https://elsewhere.example.org"}), "access token: wrong issuer"),
    (Login(access_claims={"exp": 1_000_000}), "access token: expired"),
    (Login(id_claims={"nonce": "a-nonce-of-another-sign-in"}), "ID token: wrong nonce"),
    (Login(id_claims={"nonce": None}), "ID token: wrong nonce"),
    (Login(id_claims={"aud": "another-client"}), "ID token: wrong audience"),
    (Login(id_claims={"azp": "another-client"}), "ID token: another client's"),
    (Login(id_claims={"exp": 1_000_000}), "ID token: expired"),
])
def test_tokens_that_do_not_hold_are_refused(index: Index, idp: LoopbackIssuer, login: Login,
                                             reason: str) -> None:
    refused = refusal(lambda: _finished(index, idp, login))
    assert refused.reason == reason
    assert str(refused).startswith("The identity provider's answer is not accepted")


def test_an_id_token_signed_by_another_key_is_refused(index: Index, idp: LoopbackIssuer) -> None:
    impostor = signing_key("rsa", kid=idp.signer.kid)  # the issuer's key id, not its key
    refused = refusal(lambda: _finished(index, idp, Login(id_key=impostor)))
    assert refused.reason == "ID token: bad signature"


def test_without_an_id_token_the_access_token_suffices(index: Index,
                                                       idp: LoopbackIssuer) -> None:
    assert _finished(index, idp, Login(subject="victor", id_token=False)) == Principal.of(
        "victor", Role.VIEWER, kind="oidc")


def test_a_confidential_client_authenticates_with_its_secret(index: Index,
                                                             idp: LoopbackIssuer) -> None:
    idp.client_secret = "s3cret:+/ é"
    flow = sign_in(index, idp, client_secret="s3cret:+/ é")
    started = flow.start(callback_url=CALLBACK, next_path="/")
    back = consent(started)
    flow.finish(state=back["state"], code=back["code"], verifier=started.verifier)
    assert idp.token_requests[-1]["authorization"].startswith("Basic ")

    public = sign_in(index, idp)  # the same client without its secret
    started = public.start(callback_url=CALLBACK, next_path="/")
    back = consent(started)
    assert refusal(lambda: public.finish(state=back["state"], code=back["code"],
                                         verifier=started.verifier)).reason == \
        "token request refused (invalid_client)"


# --- the endpoints: discovery and its bounds ----------------------------------------------------


def endpoints(idp: LoopbackIssuer, clock: Monotonic | None = None,
              timeout: float = 5.0) -> ProviderEndpoints:
    return ProviderEndpoints(idp.issuer, clock=clock or Monotonic(), timeout=timeout)


@pytest.mark.parametrize(("discovery", "message"), [
    ({"issuer": "http://127.0.0.1:1/realms/elsewhere"}, "names issuer"),
    ({"token_endpoint": None}, "no authorization_endpoint or token_endpoint"),
    ({"authorization_endpoint": "http://idp.example.org/auth"}, "is not an https:// URL"),
    ({"token_endpoint": "http://idp.example.org/token"}, "is not an https:// URL"),
    ({"code_challenge_methods_supported": ["plain"]}, "PKCE with S256"),
    ({"response_types_supported": ["token"]}, "authorization-code flow"),
    ({"padding": "x" * (1 << 20)}, "larger than"),
])
def test_a_discovery_document_that_cannot_be_used_gives_no_endpoints(
        idp: LoopbackIssuer, discovery: dict[str, Any], message: str) -> None:
    idp.discovery = discovery
    with pytest.raises(KeySetError, match=message):
        endpoints(idp).get()


def test_an_issuer_over_plain_http_elsewhere_than_loopback_is_refused() -> None:
    with pytest.raises(KeySetError, match="https"):
        ProviderEndpoints("http://idp.example.org/realms/test")


def test_an_issuer_that_does_not_answer_fails_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}/realms/test"
        with pytest.raises(KeySetError, match="timed out"):
            ProviderEndpoints(issuer, timeout=0.3).get()


def test_endpoints_are_cached_and_a_failure_is_not_retried_at_once(
        idp: LoopbackIssuer) -> None:
    clock = Monotonic()
    found = endpoints(idp, clock)
    assert found.get().token == idp.issuer + "/token"
    found.get()
    assert idp.requests[idp.discovery_path] == 1

    clock.now += 3600  # old: fetched again, and the issuer is down
    idp.status = 503
    assert found.get().token == idp.issuer + "/token"  # the old ones meanwhile
    assert idp.requests[idp.discovery_path] == 2

    fresh = endpoints(idp, clock)
    with pytest.raises(KeySetError):
        fresh.get()
    with pytest.raises(KeySetError, match="moments ago"):
        fresh.get()
    assert idp.requests[idp.discovery_path] == 3  # one, not one per sign-in
    idp.status = 200
    clock.now += 30
    assert fresh.get().authorization == idp.issuer + "/auth"


def test_start_with_the_identity_provider_down_is_refused(index: Index,
                                                          idp: LoopbackIssuer) -> None:
    idp.status = 503
    refused = refusal(lambda: sign_in(index, idp).start(callback_url=CALLBACK,
                                                        next_path="/ui/qa"))
    assert refused.reason == "identity provider unavailable"
    assert refused.next_path == "/ui/qa"
    assert "503" not in str(refused) and idp.issuer not in str(refused)
    assert pending_rows(index) == []


class _Answering:
    """A token endpoint on 127.0.0.1 that answers every POST with ``status``, ``headers``
    and ``body`` (a redirect, something too large)."""

    def __init__(self, status: int, body: bytes = b"{}",
                 headers: dict[str, str] | None = None) -> None:
        answer = (status, body, headers or {})

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(answer[0])
                self.send_header("Content-Length", str(len(answer[1])))
                for name, value in answer[2].items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Answering:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_token_request_follows_no_redirect(idp: LoopbackIssuer) -> None:
    with _Answering(307, headers={"Location": idp.issuer + "/token"}) as moved:
        with pytest.raises(KeySetError, match="HTTP 307"):
            post_form(moved.url, {"grant_type": "authorization_code", "code": "c"})
    assert idp.requests[idp.prefix + "/token"] == 0


def test_a_token_answer_over_the_size_limit_is_refused() -> None:
    large = json.dumps({"access_token": "x" * (1 << 20)}).encode()
    with _Answering(200, large, {"Content-Type": "application/json"}) as endpoint:
        with pytest.raises(KeySetError, match="larger than"):
            post_form(endpoint.url, {"grant_type": "authorization_code"})


# --- settings and the composition root --------------------------------------------------------


def test_the_composition_root_builds_the_sign_in_the_settings_describe(
        tmp_path: Path, idp: LoopbackIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_OIDC_CLIENT_SECRET", "from-the-environment")
    settings = Settings(data_dir=tmp_path / "data", oidc_issuer=idp.issuer,
                        oidc_audience=AUDIENCE, oidc_client_id=CLIENT_ID,
                        oidc_redirect_uri="https://pacs.example.org/ui/sign-in/callback")
    assert "from-the-environment" not in repr(settings)
    assert "oidc_client_secret" not in settings.model_dump(mode="json")  # not to the workers
    with root.open_services(settings) as services:
        flow = services.oidc_sign_in
        assert flow is not None
        assert (flow.client_id, flow.redirect_uri) == (
            CLIENT_ID, "https://pacs.example.org/ui/sign-in/callback")
        assert flow.access is services.authenticator.oidc
        assert flow.provider == f"127.0.0.1:{idp.port}/realms/test"
        idp.client_secret = "from-the-environment"
        started = flow.start(callback_url=CALLBACK, next_path="/")
        answer = httpx.get(started.url, follow_redirects=False, timeout=10)
        back = parse_qs(urlsplit(answer.headers["location"]).query)
        flow.finish(state=back["state"][0], code=back["code"][0], verifier=started.verifier)
        assert idp.token_errors == []
    monkeypatch.delenv("PACS_OIDC_CLIENT_SECRET")
    without = Settings(data_dir=tmp_path / "data", oidc_issuer=idp.issuer,
                       oidc_audience=AUDIENCE)
    with root.open_services(without) as services:
        assert services.oidc_sign_in is None


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"oidc_client_secret": "s"}, "oidc_client_secret", "needs --oidc-client-id"),
    ({"oidc_redirect_uri": "https://pacs.example.org/ui/sign-in/callback"},
     "oidc_redirect_uri", "needs --oidc-client-id"),
    ({"oidc_client_id": CLIENT_ID, "oidc_redirect_uri": "/ui/sign-in/callback"},
     "oidc_redirect_uri", "absolute"),
    ({"oidc_client_id": CLIENT_ID, "oidc_redirect_uri": "https://pacs.example.org/cb#x"},
     "oidc_redirect_uri", "fragment"),
    ({"oidc_client_id": CLIENT_ID, "oidc_client_secret": ""}, "oidc_client_secret", "empty"),
    ({"oidc_client_id": " "}, "oidc_client_id", "empty"),
])
def test_sign_in_settings_are_checked(values: dict[str, str], field: str,
                                      message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(oidc_issuer="https://idp.example.org/realms/x", oidc_audience="pacs",
                 **values)  # type: ignore[arg-type]
    first = error.value.errors()[0]
    assert first["loc"] == (field,) and message in first["msg"]
