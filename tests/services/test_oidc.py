"""OIDC bearer tokens with keys and tokens the tests make (no network: a JWKS file, or an
issuer on 127.0.0.1): signatures, the claims, refused algorithms, key discovery, caching and
rotation, roles from a claim, and the Authenticator's routing of API tokens and OIDC tokens."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from pacs import serve as root
from pacs.services.auth import (
    PREFIX,
    Authenticator,
    CredentialRefused,
    Principal,
    Role,
    TokenService,
)
from pacs.services.oidc import (
    MAX_KEY_AGE,
    MAX_TOKEN,
    REFRESH_INTERVAL,
    IssuerKeys,
    JwksFile,
    KeySetError,
    OidcError,
    OidcVerifier,
)
from pacs.settings import Settings
from storage.index import Index
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
    write_text,
)
from tests.support.pki import make_key


class Clock:
    """A monotonic clock the test moves (the refresh rate limit and the key age)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return signing_key("rsa")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return signing_key("ec")


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey) -> Path:
    return write_jwks(tmp_path / "jwks.json", rsa_key, ec_key)


def file_verifier(path: Path, role_claim: str = "roles") -> OidcVerifier:
    return OidcVerifier(issuer=ISSUER, audience=AUDIENCE, keys=JwksFile(path),
                        role_claim=role_claim)


@pytest.fixture
def verifier(jwks_file: Path) -> OidcVerifier:
    return file_verifier(jwks_file)


def reason(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(OidcError) as refused:
        verifier.verify(token)
    assert verifier.authenticate(token) is None
    return refused.value.reason


# --- accepted tokens and their principal ------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_a_valid_token_is_its_subject_with_its_roles(kind: str, tmp_path: Path) -> None:
    key = signing_key(kind)  # type: ignore[arg-type]
    verifier = file_verifier(write_jwks(tmp_path / "jwks.json", key))

    principal = verifier.authenticate(key.sign(claims(ISSUER, subject="alice",
                                                      roles=["qa", "uploader"])))

    assert principal == Principal.of("alice", Role.QA, Role.UPLOADER, kind="oidc")
    assert principal.actor == "oidc:alice"
    assert principal.display_name == "Alice"
    assert principal.may(Role.VIEWER) and not principal.may(Role.ADMIN)


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384"])
def test_every_rsa_algorithm_verifies_with_an_rsa_key(
    verifier: OidcVerifier, rsa_key: SigningKey, alg: str
) -> None:
    principal = verifier.verify(rsa_key.sign(claims(ISSUER), alg=alg))
    assert principal.roles == {Role.VIEWER}


def test_an_audience_list_that_contains_ours_is_accepted(
    verifier: OidcVerifier, ec_key: SigningKey
) -> None:
    token = ec_key.sign(claims(ISSUER, ["account", AUDIENCE]))
    assert verifier.verify(token).name == "alice"


def test_a_clock_a_little_behind_the_issuers_is_tolerated(
    verifier: OidcVerifier, rsa_key: SigningKey
) -> None:
    """Up to a minute of skew: expired 10 s ago, or valid from 10 s ahead, still passes."""
    assert verifier.verify(rsa_key.sign(claims(ISSUER, lifetime=-10)))
    assert verifier.verify(rsa_key.sign(claims(ISSUER, nbf=claims(ISSUER)["nbf"] + 10)))


def test_a_token_without_kid_uses_the_only_key(tmp_path: Path, rsa_key: SigningKey,
                                                 ec_key: SigningKey) -> None:
    single = file_verifier(write_jwks(tmp_path / "one.json", rsa_key))
    assert single.verify(rsa_key.sign(claims(ISSUER), kid=None)).name == "alice"

    two = file_verifier(write_jwks(tmp_path / "two.json", rsa_key, ec_key))
    assert reason(two, rsa_key.sign(claims(ISSUER), kid=None)) == "unknown key"


# --- refused claims ------------------------------------------------------------------------


@pytest.mark.parametrize(("changed", "expected"), [
    ({"exp": 1_000_000_000}, "expired"),
    ({"lifetime": -120}, "expired"),
    ({"nbf": 4_000_000_000}, "not yet valid"),
    ({"iat": 4_000_000_000}, "not yet valid"),
    ({"issuer": "https://idp.example.org/realms/other"}, "wrong issuer"),
    ({"issuer": ISSUER + "/"}, "wrong issuer"),  # compared exactly
    ({"audience": "another-app"}, "wrong audience"),
    ({"audience": ["account", "broker"]}, "wrong audience"),
    ({"exp": None}, "no exp claim"),
    ({"iss": None}, "no iss claim"),
    ({"aud": None}, "no aud claim"),
    ({"sub": None}, "no sub claim"),
    ({"sub": ""}, "bad subject"),
    ({"sub": "x" * 300}, "bad subject"),
    ({"sub": "alice\nroot"}, "bad subject"),
])
def test_a_token_whose_claims_do_not_hold_is_refused(
    verifier: OidcVerifier, rsa_key: SigningKey, changed: dict[str, object], expected: str
) -> None:
    options = dict(changed)
    issuer = str(options.pop("issuer", ISSUER))
    audience = options.pop("audience", AUDIENCE)
    lifetime = int(options.pop("lifetime", 300))  # type: ignore[call-overload]
    made = claims(issuer, audience, lifetime=lifetime, **options)  # type: ignore[arg-type]

    assert reason(verifier, rsa_key.sign(made)) == expected


# --- refused algorithms and signatures -----------------------------------------------------


def test_alg_none_is_refused(verifier: OidcVerifier, rsa_key: SigningKey) -> None:
    assert reason(verifier, unsigned_token(claims(ISSUER), kid=rsa_key.kid)) \
        == "algorithm not allowed"


def test_hs256_signed_with_the_public_key_as_secret_is_refused(
    verifier: OidcVerifier, rsa_key: SigningKey
) -> None:
    """The HS/RS confusion: whoever has the public key could sign with it as an HMAC secret."""
    token = hmac_token(claims(ISSUER, roles=["admin"]), rsa_key.public_pem(), kid=rsa_key.kid)
    assert reason(verifier, token) == "algorithm not allowed"


def test_a_symmetric_key_in_the_jwks_is_never_used(tmp_path: Path) -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    oct_key = {"kty": "oct", "kid": "shared", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
               "alg": "HS256"}
    verifier = file_verifier(write_jwks(tmp_path / "jwks.json", oct_key))

    assert reason(verifier, hmac_token(claims(ISSUER), secret, kid="shared")) \
        == "algorithm not allowed"


def test_an_algorithm_of_another_key_type_is_refused(
    verifier: OidcVerifier, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    """The token names the RSA key but says ES256 (signed with an EC key): the RSA key's
    algorithms decide, not the header."""
    token = ec_key.sign(claims(ISSUER), kid=rsa_key.kid)
    assert reason(verifier, token) == "algorithm not allowed"


def test_a_jwk_alg_restricts_the_key_to_that_algorithm(tmp_path: Path,
                                                         rsa_key: SigningKey) -> None:
    verifier = file_verifier(write_jwks(tmp_path / "jwks.json", rsa_key.jwk(alg="PS256")))

    assert verifier.verify(rsa_key.sign(claims(ISSUER), alg="PS256"))
    assert reason(verifier, rsa_key.sign(claims(ISSUER), alg="RS256")) == "algorithm not allowed"


def test_a_signature_by_another_key_with_the_same_kid_is_refused(
    verifier: OidcVerifier, rsa_key: SigningKey
) -> None:
    impostor = signing_key("rsa", kid=rsa_key.kid)
    assert reason(verifier, impostor.sign(claims(ISSUER, roles=["admin"]))) == "bad signature"


def test_a_changed_payload_breaks_the_signature(verifier: OidcVerifier,
                                                ec_key: SigningKey) -> None:
    header, _, signature = ec_key.sign(claims(ISSUER)).split(".")
    forged = ec_key.sign(claims(ISSUER, roles=["admin"])).split(".")[1]
    assert reason(verifier, f"{header}.{forged}.{signature}") == "bad signature"


def test_unknown_kid_oversized_and_malformed_tokens_are_refused(
    verifier: OidcVerifier, rsa_key: SigningKey
) -> None:
    assert reason(verifier, signing_key("rsa").sign(claims(ISSUER))) == "unknown key"
    padded = rsa_key.sign(claims(ISSUER, padding="x" * MAX_TOKEN))
    assert reason(verifier, padded) == "too large"
    assert reason(verifier, "not-a-jwt") == "malformed"
    assert reason(verifier, "a.b.c") == "malformed"
    assert reason(verifier, "é" + rsa_key.sign(claims(ISSUER))) == "malformed"


def test_a_refused_token_is_logged_by_reason_never_by_value(
    verifier: OidcVerifier, rsa_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    token = rsa_key.sign(claims(ISSUER, lifetime=-600))
    with caplog.at_level(logging.DEBUG, logger="pacs"):
        assert verifier.authenticate(token) is None
    assert "expired" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


# --- roles ---------------------------------------------------------------------------------


def test_roles_from_keycloaks_realm_access(jwks_file: Path, rsa_key: SigningKey) -> None:
    verifier = file_verifier(jwks_file, role_claim="realm_access.roles")
    token = rsa_key.sign(claims(ISSUER, roles=["admin"], realm_access={
        "roles": ["offline_access", "qa", "uma_authorization"]}))

    assert verifier.verify(token).roles == {Role.QA}


def test_roles_from_a_space_separated_claim(jwks_file: Path, ec_key: SigningKey) -> None:
    verifier = file_verifier(jwks_file, role_claim="pacs_roles")
    token = ec_key.sign(claims(ISSUER, pacs_roles="openid viewer uploader"))

    assert verifier.verify(token).roles == {Role.VIEWER, Role.UPLOADER}


def test_roles_from_a_namespaced_claim_whose_name_has_dots(jwks_file: Path,
                                                           rsa_key: SigningKey) -> None:
    claim = "https://pacs.example.org/roles"
    verifier = file_verifier(jwks_file, role_claim=claim)
    token = rsa_key.sign(claims(ISSUER, roles=None, **{claim: ["admin"]}))

    assert verifier.verify(token).roles == {Role.ADMIN}


@pytest.mark.parametrize("roles", [None, [], ["Viewer", "ADMIN", "superuser"], "administrators",
                                   [["admin"]], {"admin": True}])
def test_a_token_without_a_known_role_authenticates_with_no_roles(
    jwks_file: Path, rsa_key: SigningKey, roles: object
) -> None:
    """Names count only exactly (``Viewer`` is not ``viewer``); the principal may do nothing."""
    verifier = file_verifier(jwks_file, role_claim="realm_access.roles")
    made = claims(ISSUER, roles=["admin"], realm_access={"roles": roles})

    principal = verifier.verify(rsa_key.sign(made))
    assert principal.name == "alice" and principal.roles == frozenset()
    assert not any(principal.may(role) for role in Role)


# --- keys from a JWKS file -----------------------------------------------------------------


def test_a_changed_jwks_file_is_read_again(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key)
    verifier = file_verifier(path)
    rotated = signing_key("ec")
    new_token, old_token = rotated.sign(claims(ISSUER)), rsa_key.sign(claims(ISSUER))
    assert reason(verifier, new_token) == "unknown key"

    write_jwks(path, rsa_key, rotated)  # the new key is published before it signs
    assert verifier.verify(new_token).name == "alice"
    assert verifier.verify(old_token).name == "alice"

    write_jwks(path, rotated)  # the old key withdrawn
    assert reason(verifier, old_token) == "unknown key"
    assert verifier.verify(new_token).name == "alice"


def test_an_unreadable_jwks_file_keeps_the_keys_read_before(
    tmp_path: Path, rsa_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key)
    verifier = file_verifier(path)

    write_text(path, '{"keys": [')  # half written
    with caplog.at_level(logging.WARNING, logger="pacs"):
        assert verifier.verify(rsa_key.sign(claims(ISSUER))).name == "alice"
    assert "cannot be used" in caplog.text
    path.unlink()
    assert verifier.verify(rsa_key.sign(claims(ISSUER))).name == "alice"


def test_unusable_keys_are_left_out_and_the_others_used(
    tmp_path: Path, rsa_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    small = SigningKey(kid="small", private=make_key("rsa1024"), alg="RS256", kind="rsa")
    encryption = {**signing_key("rsa").jwk(), "use": "enc"}
    with caplog.at_level(logging.WARNING, logger="pacs"):
        verifier = file_verifier(write_jwks(tmp_path / "jwks.json", small.jwk(), encryption,
                                            {"kty": "EC", "crv": "P-256", "kid": "bad"},
                                            "not a key", rsa_key))

    assert verifier.verify(rsa_key.sign(claims(ISSUER))).name == "alice"
    assert "at least 2048 bits" in caplog.text and "signing key" in caplog.text
    assert reason(verifier, signing_key("rsa", kid="small").sign(claims(ISSUER))) \
        == "unknown key"


# --- keys from the issuer (discovery and JWKS over HTTP on loopback) -----------------------


def issuer_verifier(idp: LoopbackIssuer, clock: Clock) -> OidcVerifier:
    return OidcVerifier(issuer=idp.issuer, audience=AUDIENCE,
                        keys=IssuerKeys(idp.issuer, clock=clock))


def fetches(idp: LoopbackIssuer) -> tuple[int, int]:
    return idp.requests[idp.discovery_path], idp.requests[idp.jwks_path]


def test_the_issuers_keys_are_fetched_once_and_cached(rsa_key: SigningKey,
                                                      ec_key: SigningKey) -> None:
    clock = Clock()
    with LoopbackIssuer(rsa_key, ec_key) as idp:
        verifier = issuer_verifier(idp, clock)
        assert fetches(idp) == (0, 0)  # lazily, on first use

        for key in (rsa_key, ec_key, rsa_key):
            assert verifier.verify(key.sign(claims(idp.issuer))).name == "alice"
            clock.advance(60)
        assert fetches(idp) == (1, 1)


def test_an_unknown_kid_fetches_the_keys_again_at_most_once_per_interval(
    rsa_key: SigningKey,
) -> None:
    clock = Clock()
    with LoopbackIssuer(rsa_key) as idp:
        verifier = issuer_verifier(idp, clock)
        assert verifier.verify(rsa_key.sign(claims(idp.issuer)))
        clock.advance(REFRESH_INTERVAL)

        stranger = signing_key("rsa")
        assert reason(verifier, stranger.sign(claims(idp.issuer))) == "unknown key"
        assert fetches(idp) == (2, 2)
        for _ in range(20):  # a flood of made-up key ids costs no request
            assert reason(verifier, signing_key("ec").sign(claims(idp.issuer))) \
                == "unknown key"
        assert fetches(idp) == (2, 2)

        rotated = signing_key("ec")  # the issuer rotates: a new key appears
        idp.keys.append(rotated)
        clock.advance(REFRESH_INTERVAL - 1)
        assert reason(verifier, rotated.sign(claims(idp.issuer))) == "unknown key"
        clock.advance(1)
        assert verifier.verify(rotated.sign(claims(idp.issuer))).name == "alice"
        assert verifier.verify(rsa_key.sign(claims(idp.issuer))).name == "alice"
        assert fetches(idp) == (3, 3)


def test_many_threads_with_unknown_kids_cause_one_fetch(rsa_key: SigningKey) -> None:
    clock = Clock()
    with LoopbackIssuer(rsa_key) as idp:
        verifier = issuer_verifier(idp, clock)
        tokens = [signing_key("ec").sign(claims(idp.issuer)) for _ in range(8)]
        results: list[Principal | None] = []
        start = threading.Barrier(len(tokens))

        def one(token: str) -> None:
            start.wait()
            results.append(verifier.authenticate(token))

        threads = [threading.Thread(target=one, args=(token,)) for token in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert results == [None] * len(tokens)
        assert fetches(idp) == (1, 1)


def test_old_keys_are_fetched_again_and_a_withdrawn_key_stops_working(
    rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    clock = Clock()
    with LoopbackIssuer(rsa_key, ec_key) as idp:
        verifier = issuer_verifier(idp, clock)
        assert verifier.verify(rsa_key.sign(claims(idp.issuer)))
        idp.keys.remove(rsa_key)  # withdrawn (compromised)
        clock.advance(MAX_KEY_AGE - 1)
        assert verifier.verify(rsa_key.sign(claims(idp.issuer)))  # still cached
        clock.advance(1)

        assert reason(verifier, rsa_key.sign(claims(idp.issuer))) == "unknown key"
        assert verifier.verify(ec_key.sign(claims(idp.issuer))).name == "alice"
        assert fetches(idp) == (2, 2)


def test_old_keys_stay_in_use_while_the_issuer_cannot_be_reached(rsa_key: SigningKey) -> None:
    clock = Clock()
    with LoopbackIssuer(rsa_key) as idp:
        verifier = issuer_verifier(idp, clock)
        assert verifier.verify(rsa_key.sign(claims(idp.issuer)))
        idp.status = 503
        clock.advance(MAX_KEY_AGE)

        assert verifier.verify(rsa_key.sign(claims(idp.issuer))).name == "alice"
        assert fetches(idp) == (2, 1)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_keys_unavailable_when_the_issuer_is_down_then_fine_when_it_is_back(
    rsa_key: SigningKey,
) -> None:
    """A start with the identity provider down is no error; tokens fail until it answers,
    and a down issuer is asked at most once per interval."""
    clock = Clock()
    down = f"http://127.0.0.1:{closed_port()}/realms/test"
    verifier = OidcVerifier(issuer=down, audience=AUDIENCE, keys=IssuerKeys(down, clock=clock))
    assert reason(verifier, rsa_key.sign(claims(down))) == "keys unavailable"

    with LoopbackIssuer(rsa_key) as idp:
        idp.status = 500
        verifier = issuer_verifier(idp, clock)
        token = rsa_key.sign(claims(idp.issuer))
        assert reason(verifier, token) == "keys unavailable"
        assert reason(verifier, token) == "keys unavailable"
        assert fetches(idp) == (1, 0)

        idp.status = 200
        clock.advance(REFRESH_INTERVAL)
        assert verifier.verify(token).name == "alice"
        assert fetches(idp) == (2, 1)


@pytest.mark.parametrize("discovery", [
    {"issuer": "http://127.0.0.1:1/realms/elsewhere"},  # OIDC Discovery 4.3: must be ours
    {"jwks_uri": None},
    {"jwks_uri": "http://idp.example.org/jwks"},  # plain HTTP to another host
    {"padding": "x" * (1 << 20)},  # larger than 1 MB
])
def test_a_discovery_document_that_cannot_be_trusted_gives_no_keys(
    rsa_key: SigningKey, discovery: dict[str, object]
) -> None:
    with LoopbackIssuer(rsa_key) as idp:
        idp.discovery = discovery
        verifier = issuer_verifier(idp, Clock())

        assert reason(verifier, rsa_key.sign(claims(idp.issuer))) == "keys unavailable"
        assert fetches(idp) == (1, 0)


def test_an_issuer_over_plain_http_elsewhere_than_loopback_is_refused() -> None:
    with pytest.raises(KeySetError, match="https"):
        IssuerKeys("http://idp.example.org/realms/test")
    IssuerKeys("https://idp.example.org/realms/test")
    IssuerKeys("http://localhost:8080/realms/test")


# --- the Authenticator and the composition root --------------------------------------------


def test_api_tokens_go_to_the_token_service_and_others_to_oidc(
    index: Index, jwks_file: Path, rsa_key: SigningKey
) -> None:
    tokens = TokenService(index=index)
    _, secret = tokens.create("ohif-proxy", Role.VIEWER)
    oidc_token = rsa_key.sign(claims(ISSUER, subject="bob", roles=["admin"]))
    authenticator = Authenticator(tokens=tokens, oidc=file_verifier(jwks_file))

    assert authenticator.authenticate(secret) == Principal.of("ohif-proxy", Role.VIEWER)
    assert authenticator.authenticate(oidc_token) == Principal.of("bob", Role.ADMIN,
                                                                  kind="oidc")
    assert authenticator.authenticate(PREFIX + "0" * 12 + "_nope") is None
    assert authenticator.authenticate("garbage") is None
    # without OIDC configured, an identity provider's token is just unknown
    assert Authenticator(tokens=tokens).authenticate(oidc_token) is None


def test_the_authenticator_tells_why_an_oidc_token_is_refused_and_not_an_api_token(
    index: Index, jwks_file: Path, rsa_key: SigningKey
) -> None:
    """The reason goes to the audit trail (pacs.http.auth); an API token's refusal tells
    nothing of which tokens exist."""
    authenticator = Authenticator(tokens=TokenService(index=index),
                                  oidc=file_verifier(jwks_file))
    with pytest.raises(CredentialRefused) as expired:
        authenticator.verify(rsa_key.sign(claims(ISSUER, lifetime=-120)))
    assert expired.value.reason == "expired"
    with pytest.raises(CredentialRefused) as unknown:
        authenticator.verify(PREFIX + "0" * 12 + "_nope")
    assert unknown.value.reason is None
    assert "nope" not in str(unknown.value)


def test_an_oidc_principal_carries_its_token_expiry(verifier: OidcVerifier,
                                                    rsa_key: SigningKey) -> None:
    made = claims(ISSUER, lifetime=600)
    principal = verifier.verify(rsa_key.sign(made))
    assert principal.expires_at == dt.datetime.fromtimestamp(made["exp"], dt.UTC)


def test_the_composition_root_builds_the_verifier_the_settings_describe(
    tmp_path: Path, jwks_file: Path, ec_key: SigningKey
) -> None:
    settings = Settings(data_dir=tmp_path / "data", oidc_issuer=ISSUER, oidc_audience="viewer-app",
                        oidc_jwks_file=jwks_file, oidc_role_claim="realm_access.roles")
    token = ec_key.sign(claims(ISSUER, "viewer-app", realm_access={"roles": ["uploader"]}))

    with root.open_services(settings) as services:
        assert services.authenticator.authenticate(token) == Principal.of(
            "alice", Role.UPLOADER, kind="oidc")
    with root.open_services(Settings(data_dir=tmp_path / "data")) as services:
        assert services.authenticator.oidc is None
        assert services.authenticator.authenticate(token) is None


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"oidc_issuer": "https://idp.example.org/realms/x"}, "oidc_audience", "required"),
    ({"oidc_issuer": "http://idp.example.org/realms/x", "oidc_audience": "pacs"},
     "oidc_issuer", "https://"),
    ({"oidc_issuer": "https://idp.example.org/?realm=x", "oidc_audience": "pacs"},
     "oidc_issuer", "without query"),
    ({"oidc_audience": "pacs"}, "oidc_audience", "needs --oidc-issuer"),
    ({"oidc_client_id": "pacs-ui"}, "oidc_client_id", "needs --oidc-issuer"),
    ({"oidc_issuer": ISSUER, "oidc_audience": "pacs", "oidc_role_claim": "realm_access..roles"},
     "oidc_role_claim", "dotted path"),
    ({"oidc_issuer": ISSUER, "oidc_audience": "pacs", "oidc_jwks_file": "missing.json"},
     "oidc_jwks_file", "cannot be read"),
])
def test_oidc_settings_are_checked(values: dict[str, str], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(**values)  # type: ignore[arg-type]
    first = error.value.errors()[0]
    assert first["loc"] == (field,) and message in first["msg"]


def test_oidc_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                            jwks_file: Path) -> None:
    monkeypatch.setenv("PACS_OIDC_ISSUER", "http://127.0.0.1:8080/realms/pacs")
    monkeypatch.setenv("PACS_OIDC_AUDIENCE", "pacs")
    monkeypatch.setenv("PACS_OIDC_JWKS_FILE", str(jwks_file))
    monkeypatch.setenv("PACS_OIDC_ROLE_CLAIM", "realm_access.roles")
    monkeypatch.setenv("PACS_OIDC_CLIENT_ID", "pacs-ui")

    settings = Settings()
    assert (settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_file,
            settings.oidc_role_claim, settings.oidc_client_id) == (
        "http://127.0.0.1:8080/realms/pacs", "pacs", jwks_file, "realm_access.roles", "pacs-ui")
