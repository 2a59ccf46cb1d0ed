"""The one settings object: flags and ``PACS_*`` environment variables.

Only the composition root (``pacs.serve``) and the CLI read it; every component gets plain values.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# PS3.5 6.2: an AE title is at most 16 characters of the Default Character Repertoire,
# without backslash or control characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_ORIGIN = re.compile(r"^https?://[^\s/?#]+$", re.IGNORECASE)
_PEER = re.compile(r"^(?P<ae>[^=]+)=(?P<host>[^:\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$")


class AuthMode(StrEnum):
    """Whether HTTP clients must authenticate (``required``: a bearer token or a session)."""

    NONE = "none"
    REQUIRED = "required"


class QaMode(StrEnum):
    """How new studies pass the QA gate."""

    AUTO = "auto"
    MANUAL = "manual"


def check_ae_title(value: str) -> str:
    """Validate an AE title (PS3.5 6.2) and return it without padding."""
    title = value.strip()
    if not _AE_TITLE.match(title):
        raise ValueError(
            f"AE title {value!r} must be 1 to 16 printable ASCII characters without backslash"
        )
    return title


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only (``127.0.0.0/8``, ``::1``, ``localhost``);
    a wildcard (``0.0.0.0``, ``::``, empty) or another name is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


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
        return cls(ae_title=check_ae_title(match["ae"]), host=match["host"].strip("[]"), port=port)

    def __str__(self) -> str:
        return f"{self.ae_title}={self.host}:{self.port}"


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
        "tls_key the HTTP listener speaks HTTPS only, with HSTS",
    )
    tls_key: Path | None = Field(
        default=None, validate_default=True,
        description="PEM private key of tls_cert (not encrypted); both are given or neither",
    )
    tls_ca: Path | None = Field(
        default=None, description="PEM CA certificates that client certificates must chain to",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite file under the data dir"
    )
    peers: Annotated[tuple[Peer, ...], NoDecode] = ()
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
    min_free_space_mb: int = Field(
        default=100, ge=0,
        description="stores are refused (0xA700) while the data disk has less free space",
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
    routes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="MODALITY=PEER or *=PEER: forward archived, stable studies"
    )
    route_retry_seconds: float = Field(
        default=10.0, gt=0, description="first retry delay of a failed routing job (doubles)"
    )
    route_max_attempts: int = Field(default=10, ge=1)
    log_level: str = "INFO"

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("dimse_port", "http_port")
    @classmethod
    def _port(cls, value: int) -> int:
        return check_port(value)

    @field_validator("tls_cert", "tls_ca")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file")
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
