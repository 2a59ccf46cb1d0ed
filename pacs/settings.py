"""The one settings object: flags and ``PACS_*`` environment variables.

Only the composition root (``pacs.serve``) and the CLI read it; every component gets plain values.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import ssl
import urllib.parse
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pacs.services.ae_registry import check_ae_title, check_host
from pacs.services.syslog import SyslogTarget
from pacs.services.webhooks import Webhook
from storage.blob_store import parse_s3_url

_ORIGIN = re.compile(r"^https?://[^\s/?#]+$", re.IGNORECASE)
_CLAIM_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{16,200}=*")
_PEER = re.compile(r"^(?P<ae>[^=]+)=(?P<host>[^:\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$")


class AuthMode(StrEnum):
    """Whether HTTP clients must authenticate (``required``: a bearer token or a session)."""

    NONE = "none"
    REQUIRED = "required"


class QaMode(StrEnum):
    """How new studies pass the QA gate."""

    AUTO = "auto"
    MANUAL = "manual"


class DimseAccess(StrEnum):
    """Who may associate with the DIMSE listener."""

    REGISTERED = "registered"  # AEs of the AE registry, from their hosts, for their services
    ANY = "any"  # any calling AE, any called AE title, every service


class DimseTransport(StrEnum):
    """How DIMSE messages travel (``pacs/dimse/transport``)."""

    FAST = "fast"  # pacs's fast path over pynetdicom (the default)
    STOCK = "stock"  # pynetdicom exactly as published: the yardstick and the fall-back


class LogFormat(StrEnum):
    """How log lines are written (to stderr)."""

    TEXT = "text"  # time, level, process, logger: message
    JSON = "json"  # one JSON object per line (pacs.services.log_lines)


class TlsClientCert(StrEnum):
    """Whether a DICOM TLS client must present a certificate (chained to ``tls_ca``)."""

    REQUIRED = "required"
    OPTIONAL = "optional"  # when it presents one, it is checked as if required
    NONE = "none"  # none is asked for



def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only (``127.0.0.0/8``, ``::1``, ``localhost``);
    a wildcard (``0.0.0.0``, ``::``, empty) or another name is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_database_driver(url: str) -> None:
    """A PostgreSQL URL needs psycopg 3, which is an extra (``pip install 'pacs[postgres]'``):
    said before anything starts rather than as SQLAlchemy's ModuleNotFoundError. The URL
    itself is never repeated (it may hold a password)."""
    dialect, _, driver = url.partition("://")[0].lower().partition("+")
    if dialect != "postgresql" or driver not in ("", "psycopg"):
        return
    if importlib.util.find_spec("psycopg") is None:
        raise ValueError(
            "PostgreSQL needs the psycopg driver, which is not installed: "
            "pip install 'pacs[postgres]' (URLs as postgresql+psycopg://USER@HOST/DB)"
        )
    if not driver and importlib.util.find_spec("psycopg2") is None:
        raise ValueError("name the driver pacs installs: postgresql+psycopg://USER@HOST/DB")


def check_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is out of range 0-65535")
    return value


class Peer(BaseModel, frozen=True):
    """A known remote AE: a C-MOVE destination and a routing target."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``AE=HOST:PORT``."""
        match = _PEER.match(text.strip())
        if not match:
            raise ValueError(f"peer {text!r} is not AE=HOST:PORT")
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"peer {text!r}: port {port} is out of range 1-65535")
        host = check_host(match["host"])
        if host == "*" or "/" in host:
            raise ValueError(f"peer {text!r}: the host is an address or a name to connect to")
        return cls(ae_title=check_ae_title(match["ae"]), host=host, port=port)

    def __str__(self) -> str:
        return f"{self.ae_title}={self.host}:{self.port}"


def _needs_issuer(value: object, info: ValidationInfo) -> None:
    """An OIDC setting without an issuer (not reported when the issuer itself was bad)."""
    if value is not None and "oidc_issuer" in info.data and info.data["oidc_issuer"] is None:
        raise ValueError("needs --oidc-issuer too")


def _no_password() -> bytes:
    """An encrypted key is refused rather than asked for on the terminal (OpenSSL's default)."""
    return b""


class Settings(BaseSettings):
    """Every setting of ``pacs serve``; env prefix ``PACS_``."""

    model_config = SettingsConfigDict(env_prefix="PACS_", extra="ignore")

    data_dir: Path = Path("./pacs-data")
    ae_title: str = "PACS"
    dimse_port: int = 11112
    dimse_host: str = Field(
        default="127.0.0.1", description="address the DIMSE listener binds; 0.0.0.0 for all"
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8042
    auth: AuthMode = Field(
        default=AuthMode.NONE, description="required: every HTTP route but /health and "
        "sign-in needs a bearer token (pacs token create) or a UI session with a role; none: "
        "anyone who reaches the port may do everything (loopback only, unless insecure)",
    )
    insecure: bool = Field(
        default=False, description="serve with auth none on a non-loopback address anyway",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain (server certificate first); with "
        "tls_key the HTTP listener speaks HTTPS only, with HSTS; the DICOM TLS listener's too",
    )
    tls_key: Path | None = Field(
        default=None, validate_default=True,
        description="PEM private key of tls_cert (not encrypted); both are given or neither",
    )
    tls_ca: Path | None = Field(
        default=None, description="PEM CA certificates that client certificates must chain to",
    )
    dimse_tls_port: int | None = Field(
        default=None, description="DICOM TLS port (PS3.15 Annex B; 2762 by convention) beside "
        "the plain DIMSE port, on dimse_host; needs tls_cert and tls_key (none: no TLS listener)",
    )
    tls_client_cert: TlsClientCert = Field(
        default=TlsClientCert.REQUIRED, validate_default=True,
        description="DICOM TLS clients must present a certificate that chains to tls_ca, is "
        "valid now and names their address (required); may present one, checked alike "
        "(optional); are not asked for one (none)",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite file under the data dir"
    )
    blob_store: str | None = Field(
        default=None, description="where instances are stored: s3://BUCKET/PREFIX for "
        "S3-compatible object storage (endpoint, region and credentials from the standard "
        "AWS_* variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...); default the file store "
        "under data_dir. Uploads are staged under data_dir/tmp either way",
    )
    peers: Annotated[tuple[Peer, ...], NoDecode] = ()
    dimse_access: DimseAccess | None = Field(
        default=None,
        description="registered: only AEs of the AE registry (pacs ae add, --peer, --modality) "
        "may associate, from their hosts, for the services they are allowed; any: every "
        "calling AE may do everything; default: registered when dimse_host is not a loopback "
        "address, else any",
    )
    qa: QaMode = QaMode.AUTO
    overwrite: bool = Field(
        default=False, description="a re-sent SOP Instance UID replaces the stored instance"
    )
    accept_unknown_sop_classes: bool = Field(
        default=True,
        description="C-STORE accepts storage SOP classes pynetdicom does not list (retired, "
        "private, newer) when a requestor proposes them, as Orthanc's UnknownSopClassAccepted",
    )
    max_associations: int = Field(default=32, ge=1, le=1024)
    dimse_processes: int = Field(
        default=0, ge=0, le=64,
        description="processes serving DIMSE associations (0: one per CPU core, at most 4)",
    )
    dimse_transport: DimseTransport = Field(
        default=DimseTransport.FAST,
        description="how DIMSE messages travel: fast (pacs's transport over pynetdicom) or "
        "stock (pynetdicom exactly as published, slower; Q/R re-encodes the instances it sends)",
    )
    min_free_space_mb: int = Field(
        default=100, ge=0,
        description="stores are refused (0xA700) while the data disk has less free space "
        "(with an object store: the disk of data_dir/tmp, where uploads are staged)",
    )
    max_pdu_size: int = Field(
        default=1 << 20, ge=4096, le=1 << 26,
        description="Maximum PDU Length advertised and enforced, bytes (PS3.8 D.1); a larger "
        "P-DATA-TF PDU aborts the association before it is read",
    )
    dimse_read_timeout: float = Field(
        default=30.0, gt=0, le=3600,
        description="seconds: a DIMSE connection that sends no complete PDU, no A-ASSOCIATE-RQ "
        "(ARTIM, PS3.8 9.1.5) or nothing at all on an idle association for this long is closed",
    )
    hl7_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="port of the HL7 v2 MLLP listener for imaging orders (ORM^O01, OMI^O23) "
        "on dimse_host; it has no authentication of its own: bind where only the RIS reaches "
        "(none or 0: no listener)",
    )
    hl7_max_message_kb: int = Field(
        default=1024, ge=1, le=65536,
        description="KiB of one HL7 message; a larger one is answered AR and its connection "
        "closed",
    )
    hl7_read_timeout: float = Field(
        default=30.0, gt=0, le=3600,
        description="seconds: an HL7 connection idle, or one message not complete, for this "
        "long is closed",
    )
    hl7_max_connections: int = Field(
        default=16, ge=1, le=1024, description="HL7 connections served at once; one more is "
        "closed",
    )
    max_connections_per_host: int = Field(
        default=16, ge=1, le=1024,
        description="DIMSE connections open at once from one address; the excess is closed",
    )
    sqlite_synchronous: str = Field(
        default="FULL", description="SQLite PRAGMA synchronous (FULL: commit survives power loss)"
    )
    max_query_results: int = Field(
        default=1000, ge=1,
        description="C-FIND / QIDO-RS answers at most this many matches (a warning is logged)",
    )
    fuzzy_person_names: bool = Field(
        default=True, description="PN matching ignores case and accents (False: exact)"
    )
    retrieve_pending_interval: float = Field(
        default=0.0, ge=0.0, le=3600.0,
        description="C-MOVE and C-GET: a Pending response after the first sub-operation, then "
        "at most one per this many seconds (PS3.4 C.4.2.3.1: they are optional; dcm4chee sends "
        "one every 5 s); 0 (the default, as Orthanc): after every sub-operation but the last",
    )
    max_decoded_mb: int = Field(
        default=1024, ge=1,
        description="MiB one decode may take, judged from the header before decoding (pixels "
        "a rendering, /frames or a transcode decodes, with a rendering's working copies; the "
        "inflated size of a deflated data set); over it: HTTP 422, a failed C-MOVE/C-GET "
        "sub-operation, 0xC000 at ingest",
    )
    max_concurrent_decodes: int = Field(
        default=2, ge=1,
        description="decodes running at once per process; the excess waits up to 30 s, then "
        "HTTP 503 with Retry-After",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="browser origins (scheme://host[:port], comma separated) that may call "
        "DICOMweb from their pages: reads, STOW-RS and reject; '*' alone: any origin may read "
        "(GET), none may change anything; default: none (same-origin pages only)",
    )
    max_request_mb: int = Field(
        default=1024, ge=1, description="STOW-RS request bodies above this answer 413"
    )
    http_header_timeout: float = Field(
        default=5.0, gt=0, le=300,
        description="seconds a client has for a request line and headers (from connecting, or "
        "from the previous answer); then the connection is closed",
    )
    http_max_connections: int = Field(
        default=1000, ge=1, description="open HTTP connections; beyond, new ones get 503"
    )
    http_max_connections_per_host: int = Field(
        default=100, ge=1,
        description="open HTTP connections from one client address; beyond, 503 (raise it "
        "behind a reverse proxy, whose connections all come from one address)",
    )
    oidc_issuer: str | None = Field(
        default=None, description="OpenID Connect issuer URL (https://; http:// only for "
        "localhost): bearer tokens it signs are accepted; its keys come from its discovery "
        "document unless oidc_jwks_file is given",
    )
    oidc_audience: str | None = Field(
        default=None, validate_default=True,
        description="the aud a token must contain (required with oidc_issuer)",
    )
    oidc_jwks_file: Path | None = Field(
        default=None, description="the issuer's keys as a JWKS file (no outbound access "
        "needed); re-read when it changes",
    )
    oidc_role_claim: str = Field(
        default="roles", description="claim holding the role names (viewer, uploader, qa, "
        "admin): a list or a space-separated string; dots step into objects, e.g. "
        "realm_access.roles for Keycloak",
    )
    oidc_client_id: str | None = Field(
        default=None, description="the web UI's client id at the issuer: the sign-in page "
        "offers signing in there (authorization-code flow with PKCE)",
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, exclude=True,  # never dumped (the DIMSE workers' copy goes without it)
        description="the client secret, for a confidential client (client_secret_basic); "
        "none for a public client",
    )
    oidc_redirect_uri: str | None = Field(
        default=None, description="the callback URL registered at the issuer "
        "(https://HOST/ui/sign-in/callback); by default it is derived from each request's "
        "Host",
    )
    modalities: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="AE titles of known modalities (QA check; empty: any)"
    )
    stable_seconds: float = Field(
        default=30.0, ge=0, description="a study is stable after this long without an instance"
    )
    retention_days: float = Field(
        default=30.0, ge=0, description="rejected studies are purged after this many days"
    )
    orphan_sweep: bool = Field(
        default=True, description="at start, before listening, remove blobs no index row "
        "refers to (a crash's leftovers between a blob's rename and its index commit)"
    )
    orphan_grace_seconds: float = Field(
        default=0.0, ge=0, description="the start-up sweep keeps orphan blobs younger than "
        "this (0 is safe for one server; a store shared by several servers needs more)"
    )
    audit_queries: bool = Field(
        default=True, description="record C-FIND and QIDO-RS queries in the audit trail "
        "(batched in the background)"
    )
    audit_syslog: str | None = Field(
        default=None, description="also send every audit event as a DICOM Audit Message "
        "(PS3.15 A.5) to a syslog receiver: HOST:PORT (UDP, RFC 5426), HOST:PORT,tls (RFC "
        "5425; the receiver's certificate checked against tls_ca, else the system's CAs; "
        "tls_cert is presented) or HOST:PORT,tcp (plain TCP, octet counting)"
    )
    routes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="MODALITY=PEER or *=PEER: forward archived, stable studies"
    )
    route_retry_seconds: float = Field(
        default=10.0, gt=0, description="first retry delay of a failed routing job (doubles)"
    )
    route_max_attempts: int = Field(default=10, ge=1)
    route_lease_seconds: float = Field(
        default=30.0, ge=1.0, le=3600.0,
        description="how long a routing job stays this server's without a renewal (renewed "
        "every third of it while sending): after a server dies, another takes its jobs then",
    )
    change_retention_days: float = Field(
        default=30.0, gt=0, description="changes older than this leave the change feed "
        "(GET /api/changes) in a background pass; a poller further behind misses them",
    )
    webhooks: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="URL[,event,...]: POST each change of the feed (the events "
        "named, else all) as JSON to URL (http or https); repeatable, several in "
        "PACS_WEBHOOKS separated by spaces or ';'",
    )
    webhook_secret: SecretStr | None = Field(
        default=None, exclude=True,  # never dumped (the DIMSE workers' copy goes without it)
        description="key of the X-Pacs-Signature header: sha256=<hex HMAC-SHA256 of the body>",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="a webhook POST's connect and read timeout",
    )
    webhook_retry_seconds: float = Field(
        default=2.0, gt=0, description="first retry delay of a failed webhook POST (doubles)",
    )
    webhook_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="the longest delay between two webhook attempts",
    )
    study_lease_seconds: float = Field(
        default=30.0, ge=1.0, le=3600.0,
        description="how long a study's stability check or purge stays this server's without "
        "a renewal (renewed every third of it while working): after a server dies, another "
        "takes its studies then",
    )
    node_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
        description="this server among several on one database (the holder of leases on "
        "routing jobs and on studies' stability checks and purges; logs); default: host "
        "name and process id",
    )
    log_level: str = "INFO"
    log_format: LogFormat = Field(
        default=LogFormat.TEXT, description="text, or json: one JSON object per line with "
        "time, level, logger, message and the DIMSE association id or HTTP request id",
    )
    metrics_token: SecretStr | None = Field(
        default=None, exclude=True,  # never dumped (the DIMSE workers' copy goes without it)
        description="a static bearer token that GET /metrics accepts (and no other route), "
        "for a Prometheus scraper under --auth required; at least 16 characters of "
        "A-Z a-z 0-9 - . _ ~ + / (and = at the end)",
    )
    readiness_timeout: float = Field(
        default=2.0, gt=0, le=60,
        description="seconds GET /readyz waits for the index to answer and for the blob store "
        "to take a probe file; longer is a failed check (timeout)",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_database_driver(value)
        return value

    @field_validator("dimse_port", "http_port")
    @classmethod
    def _port(cls, value: int) -> int:
        return check_port(value)

    @field_validator("tls_cert", "tls_ca")
    @classmethod
    def _pem_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file")
        if value is not None and info.field_name == "tls_ca":
            try:  # read once here: a bad file is one line at start-up
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=value)
            except (ssl.SSLError, OSError, ValueError):
                raise ValueError(f"{value}: no PEM CA certificate in it") from None
        return value

    @field_validator("tls_key")
    @classmethod
    def _tls_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Both ``tls_cert`` and ``tls_key`` or neither; when both, the key must be the
        certificate's (loaded once here, so that a mismatch is one line at start-up, not a
        failed handshake for every client)."""
        cert = info.data.get("tls_cert")
        if value is None:
            if cert is not None:
                raise ValueError("required with --tls-cert (the certificate's private key)")
            return None
        if not value.is_file():
            raise ValueError(f"{value}: no such file")
        if cert is None:
            if "tls_cert" in info.data:  # not given (a bad one was already reported)
                raise ValueError("needs --tls-cert too (the certificate it belongs to)")
            return value
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, value, password=_no_password)
        except (ssl.SSLError, OSError):
            raise ValueError(
                f"{value} is not the unencrypted PEM private key of {cert}"
            ) from None
        return value

    @field_validator("audit_syslog")
    @classmethod
    def _audit_syslog(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(SyslogTarget.parse(value))

    @field_validator("dimse_tls_port")
    @classmethod
    def _dimse_tls_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        check_port(value)
        if not ({"tls_cert", "tls_key"} <= info.data.keys()):
            return value  # a bad --tls-cert or --tls-key was reported already
        if info.data["tls_cert"] is None or info.data["tls_key"] is None:
            raise ValueError("needs --tls-cert and --tls-key (the server's certificate)")
        if value and value == info.data.get("dimse_port"):
            raise ValueError(f"port {value} is the plain DIMSE port (--dimse-port) too")
        return value

    @field_validator("tls_client_cert")
    @classmethod
    def _tls_client_cert(cls, value: TlsClientCert, info: ValidationInfo) -> TlsClientCert:
        """Client certificates are verified against ``tls_ca``: without one, only ``none``."""
        if (info.data.get("dimse_tls_port") is not None and value is not TlsClientCert.NONE
                and "tls_ca" in info.data and info.data["tls_ca"] is None):
            raise ValueError(f"{value} needs --tls-ca (the CA client certificates must chain "
                             "to); or 'none' to ask clients for no certificate")
        return value

    @field_validator("peers", mode="before")
    @classmethod
    def _peers(cls, value: Any) -> tuple[Peer, ...]:
        """Peers come as ``AE=HOST:PORT`` strings (flags; the env var is comma separated)."""
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = [item for item in value.split(",") if item.strip()]
        peers = [
            item if isinstance(item, Peer)
            else Peer.model_validate(item) if isinstance(item, dict)  # a worker's model_dump()
            else Peer.parse(str(item))
            for item in value
        ]
        titles = [peer.ae_title for peer in peers]
        duplicates = sorted({title for title in titles if titles.count(title) > 1})
        if duplicates:
            raise ValueError(f"peer AE title registered twice: {', '.join(duplicates)}")
        return tuple(peers)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        """Origins as a browser sends them (RFC 6454 7: ``scheme://host[:port]``, no path)."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split(",")
        origins = tuple(str(origin).strip().rstrip("/") for origin in value
                        if str(origin).strip())
        if "*" in origins and len(origins) > 1:
            raise ValueError("'*' cannot be combined with named origins")
        for origin in origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"origin {origin!r} is not scheme://host[:port]")
        return origins

    @field_validator("oidc_issuer")
    @classmethod
    def _oidc_issuer(cls, value: str | None) -> str | None:
        """An issuer is compared exactly with a token's ``iss``, so it is kept as given."""
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.query or parts.fragment or not parts.hostname or not (
            parts.scheme == "https" or parts.scheme == "http" and _is_loopback(parts.hostname)
        ):
            raise ValueError(f"{value!r} is not an https:// URL without query (http:// only "
                             "for localhost)")
        return value

    @field_validator("oidc_audience")
    @classmethod
    def _oidc_audience(cls, value: str | None, info: ValidationInfo) -> str | None:
        issuer = info.data.get("oidc_issuer")
        if value is not None and not value.strip():
            raise ValueError("is empty")
        if value is None and issuer is not None:
            raise ValueError("required with --oidc-issuer (the aud tokens for pacs carry)")
        _needs_issuer(value, info)
        return value

    @field_validator("oidc_jwks_file")
    @classmethod
    def _oidc_jwks_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        _needs_issuer(value, info)
        try:
            document = json.loads(value.read_bytes())
        except OSError:
            raise ValueError(f"{value}: cannot be read") from None
        except ValueError:
            raise ValueError(f"{value}: not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError(f"{value}: not a JWKS (a JSON object with a 'keys' list)")
        return value

    @field_validator("oidc_role_claim")
    @classmethod
    def _oidc_role_claim(cls, value: str) -> str:
        if not _CLAIM_PATH.match(value):
            raise ValueError(f"{value!r} is not a claim name or a dotted path of names")
        return value

    @field_validator("oidc_client_id")
    @classmethod
    def _oidc_client_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError("is empty or not printable")
        _needs_issuer(value, info)
        return value

    @field_validator("oidc_client_secret", "oidc_redirect_uri")
    @classmethod
    def _oidc_client_option(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("oidc_client_id") is None \
                and "oidc_client_id" in info.data:
            raise ValueError("needs --oidc-client-id too")
        if isinstance(value, SecretStr) and not value.get_secret_value():
            raise ValueError("is empty")
        if info.field_name == "oidc_redirect_uri" and value is not None:
            parts = urllib.parse.urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
                raise ValueError(f"{value!r} is not an absolute http(s):// URL without a "
                                 "fragment")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        if not _BEARER_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("must be 16 to 200 characters of A-Z a-z 0-9 - . _ ~ + / "
                             "(then = at the end), as a bearer token (RFC 6750 2.1)")
        return value

    @field_validator("modalities", mode="before")
    @classmethod
    def _modalities(cls, value: Any) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = value.split(",")
        return tuple(check_ae_title(str(item)) for item in value if str(item).strip())

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        known = {peer.ae_title for peer in info.data.get("peers", ())}
        if isinstance(value, str):
            value = value.split(",")
        routes = []
        for item in value:
            text = str(item).strip()
            selector, _, peer = text.partition("=")
            if not selector.strip() or not peer.strip():
                raise ValueError(f"route {text!r} is not MODALITY=PEER (or *=PEER)")
            peer = check_ae_title(peer)
            if peer not in known:
                raise ValueError(f"route {text!r}: {peer} is not a registered --peer")
            routes.append(f"{selector.strip().upper()}={peer}")
        return tuple(routes)

    @field_validator("webhooks", mode="before")
    @classmethod
    def _webhooks(cls, value: Any) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = value.replace(";", " ").split()
        return tuple(str(Webhook.parse(str(item))) for item in value if str(item).strip())

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("is empty")
        return value

    @field_validator("blob_store")
    @classmethod
    def _blob_store(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        bucket, prefix = parse_s3_url(value.strip())
        return f"s3://{bucket}/{prefix}"

    @field_validator("sqlite_synchronous")
    @classmethod
    def _synchronous(cls, value: str) -> str:
        value = value.upper()
        if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"sqlite_synchronous {value!r} is not OFF, NORMAL, FULL or EXTRA")
        return value

    @property
    def exposed_without_auth(self) -> str | None:
        """Why ``pacs serve`` must not start as configured: a listener that others on the
        network can reach while HTTP needs no authentication (``--insecure`` allows it);
        None when it may."""
        if self.auth is AuthMode.REQUIRED or self.insecure:
            return None
        for flag, host in (("--http-host", self.http_host), ("--dimse-host", self.dimse_host)):
            if not is_loopback(host):
                return (f"{flag} {host} is reachable from the network but --auth is none: "
                        "anyone could read and change every study; use --auth required "
                        "(pacs token create makes tokens), a loopback address, or --insecure")
        return None

    @property
    def effective_dimse_processes(self) -> int:
        if self.dimse_processes:
            return self.dimse_processes
        return max(1, min(os.cpu_count() or 1, 4))

    @property
    def effective_dimse_access(self) -> DimseAccess:
        """``dimse_access``, or by default ``registered`` unless the DIMSE listener binds a
        loopback address (127.0.0.0/8, ::1, localhost) and so serves this host only."""
        if self.dimse_access is not None:
            return self.dimse_access
        return DimseAccess.ANY if _is_loopback(self.dimse_host) else DimseAccess.REGISTERED

    @property
    def effective_cors(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(origins, methods) of CORS for DICOMweb: none by default; ``*``: any origin may
        read; named origins may also POST (STOW-RS, reject), and only they pass the
        cross-site guard of state-changing requests."""
        if not self.cors_origins:
            return (), ()
        if self.cors_origins == ("*",):
            return ("*",), ("GET", "HEAD", "OPTIONS")
        return self.cors_origins, ("GET", "HEAD", "OPTIONS", "POST")

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"


def _is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``; any other name, and the wildcard
    addresses (0.0.0.0, ::), are not."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
