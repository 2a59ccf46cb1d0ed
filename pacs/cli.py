"""``pacs``: flags → Settings → one call into the composition root.

Every flag value is validated by :class:`pacs.settings.Settings`; a bad one ends the program
with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pacs import serve as root
from pacs.services import tls
from pacs.services.ae_registry import AeRegistryError
from pacs.services.auth import TokenError
from pacs.services.bulk_import import ImportResult, iter_files
from pacs.services.errors import OutOfResources
from pacs.settings import Settings

app = typer.Typer(
    name="pacs",
    help="A DICOM PACS mini-server: DIMSE and DICOMweb over one index and a blob store.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
)
db_app = typer.Typer(help="Index database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
tls_app = typer.Typer(help="TLS certificates, keys and CAs.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")
token_app = typer.Typer(help="API tokens of HTTP clients (Authorization: Bearer).",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
ae_app = typer.Typer(help="The AE registry: remote DICOM AEs, their addresses and services.",
                     no_args_is_help=True)
app.add_typer(ae_app, name="ae")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

DataDir = Annotated[str | None, typer.Option("--data-dir", help="data folder [./pacs-data]")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL [SQLite file in the data folder]"),
]
BlobStoreUrl = Annotated[
    str | None,
    typer.Option("--blob-store", help="s3://BUCKET/PREFIX: instances in S3-compatible object "
                 "storage (endpoint and credentials: the AWS_* variables) [files in the data "
                 "folder]"),
]


def _settings(**flags: Any) -> Settings:
    """Settings from env vars and the flags that were given; a bad value exits with status 2."""
    given = {name: value for name, value in flags.items() if value not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        flag = {"peers": "peer", "modalities": "modality", "routes": "route",
                "webhooks": "webhook"}.get(
            where, where).replace("_", "-")
        err.print(f"pacs: error: --{flag}: {message}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from None


@app.command()
def serve(
    data_dir: DataDir = None,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="DIMSE AE title [PACS]")
    ] = None,
    dimse_port: Annotated[str | None, typer.Option("--dimse-port", help="[11112]")] = None,
    dimse_host: Annotated[
        str | None, typer.Option("--dimse-host", help="DIMSE bind address [127.0.0.1]")
    ] = None,
    http_host: Annotated[
        str | None, typer.Option("--http-host", help="HTTP bind address [127.0.0.1]")
    ] = None,
    http_port: Annotated[str | None, typer.Option("--http-port", help="[8042]")] = None,
    auth: Annotated[
        str | None, typer.Option("--auth", help="none | required: HTTP clients need a bearer "
                                 "token or a UI session [none]"),
    ] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="allow --auth none on a non-loopback "
                                  "address")
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", help="PEM certificate chain: the HTTP port "
                                 "speaks HTTPS only (with --tls-key), and it is the DICOM TLS "
                                 "port's [none: plain HTTP]"),
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option("--tls-key", help="PEM private key of --tls-cert")
    ] = None,
    tls_ca: Annotated[
        str | None, typer.Option("--tls-ca", help="PEM CA certificates client "
                                 "certificates must chain to [none]"),
    ] = None,
    dimse_tls_port: Annotated[
        str | None, typer.Option("--dimse-tls-port", help="DICOM TLS port, 2762 by convention "
                                 "(needs --tls-cert, --tls-key) [none: no TLS listener]"),
    ] = None,
    tls_client_cert: Annotated[
        str | None, typer.Option("--tls-client-cert", help="required | optional | none: DICOM "
                                 "TLS clients present a certificate chained to --tls-ca "
                                 "[required]"),
    ] = None,
    hl7_port: Annotated[
        str | None, typer.Option("--hl7-port", help="HL7 v2 MLLP port for imaging orders "
                                 "(ORM^O01, OMI^O23), on --dimse-host [none]"),
    ] = None,
    database_url: DatabaseUrl = None,
    blob_store: BlobStoreUrl = None,
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="known remote AE, AE=HOST:PORT (repeatable)"),
    ] = None,
    dimse_access: Annotated[
        str | None,
        typer.Option("--dimse-access", help="registered: only AEs of the AE registry (pacs ae, "
                     "--peer, --modality) may associate | any [registered unless "
                     "--dimse-host is a loopback address]"),
    ] = None,
    qa: Annotated[str | None, typer.Option("--qa", help="auto | manual [auto]")] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite/--keep-first", help="a re-sent instance replaces the stored one"),
    ] = None,
    dimse_processes: Annotated[
        str | None,
        typer.Option("--dimse-processes", help="processes serving associations [CPU cores, max 4]"),
    ] = None,
    dimse_transport: Annotated[
        str | None,
        typer.Option("--dimse-transport", help="fast, or stock: pynetdicom as published [fast]"),
    ] = None,
    cors_origins: Annotated[
        str | None,
        typer.Option("--cors-origins", help="origins of viewers on other sites allowed to "
                     "use DICOMweb, comma separated; '*': any may read [none]"),
    ] = None,
    max_request_mb: Annotated[
        str | None, typer.Option("--max-request-mb", help="STOW-RS body limit in MB [1024]")
    ] = None,
    oidc_issuer: Annotated[
        str | None, typer.Option("--oidc-issuer", help="OpenID Connect issuer URL whose "
                                 "bearer tokens are accepted [none]"),
    ] = None,
    oidc_audience: Annotated[
        str | None, typer.Option("--oidc-audience", help="aud the tokens must contain "
                                 "(required with --oidc-issuer)"),
    ] = None,
    oidc_jwks_file: Annotated[
        str | None, typer.Option("--oidc-jwks-file", help="the issuer's keys as a JWKS file "
                                 "[fetched from the issuer]"),
    ] = None,
    oidc_role_claim: Annotated[
        str | None, typer.Option("--oidc-role-claim", help="claim with the role names, dots "
                                 "for nested ones (Keycloak: realm_access.roles) [roles]"),
    ] = None,
    oidc_client_id: Annotated[
        str | None, typer.Option("--oidc-client-id", help="the web UI's client id at the "
                                 "issuer (sign-in with PKCE) [none]"),
    ] = None,
    oidc_client_secret: Annotated[
        str | None, typer.Option("--oidc-client-secret", help="the client secret of a "
                                 "confidential client (prefer PACS_OIDC_CLIENT_SECRET: a "
                                 "flag shows in ps) [none: a public client]"),
    ] = None,
    oidc_redirect_uri: Annotated[
        str | None, typer.Option("--oidc-redirect-uri", help="the callback URL registered "
                                 "at the issuer [derived from the request: "
                                 "http(s)://HOST/ui/sign-in/callback]"),
    ] = None,
    route: Annotated[
        list[str] | None,
        typer.Option("--route", help="MODALITY=PEER or *=PEER: forward archived studies "
                     "(repeatable; PEER must be a --peer)"),
    ] = None,
    modality: Annotated[
        list[str] | None,
        typer.Option("--modality", help="AE title of a known modality (repeatable; QA check)"),
    ] = None,
    stable_seconds: Annotated[
        str | None, typer.Option("--stable-seconds", help="quiet time before a study is "
                                 "stable (study checks, routing) [30]"),
    ] = None,
    retention_days: Annotated[
        str | None, typer.Option("--retention-days", help="rejected studies are purged "
                                 "after this many days [30]"),
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option("--webhook", help="URL[,event,...]: POST each change (of those events, "
                     "else all) as JSON to URL (repeatable) [none]"),
    ] = None,
    webhook_secret: Annotated[
        str | None, typer.Option("--webhook-secret", help="sign webhook bodies: header "
                                 "X-Pacs-Signature sha256=HMAC (prefer PACS_WEBHOOK_SECRET: a "
                                 "flag shows in ps) [none]"),
    ] = None,
    change_retention_days: Annotated[
        str | None, typer.Option("--change-retention-days", help="changes leave the change "
                                 "feed after this many days [30]"),
    ] = None,
    audit_syslog: Annotated[
        str | None, typer.Option("--audit-syslog", help="also send each audit event as a "
                                 "DICOM Audit Message to syslog: HOST:PORT (UDP), "
                                 "HOST:PORT,tls (RFC 5425) or HOST:PORT,tcp [none]"),
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="[INFO]")] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text | json: one JSON object per "
                                 "line, with the association or request id [text]"),
    ] = None,
    metrics_token: Annotated[
        str | None, typer.Option("--metrics-token", help="a static bearer token accepted by "
                                 "GET /metrics only, for a scraper (prefer "
                                 "PACS_METRICS_TOKEN: a flag shows in ps) [none]"),
    ] = None,
) -> None:
    """Run the DIMSE SCP and the HTTP server (DICOMweb, /livez, /readyz, /metrics) in one
    process."""
    settings = _settings(
        data_dir=data_dir, ae_title=ae_title, dimse_port=dimse_port, dimse_host=dimse_host,
        http_host=http_host, http_port=http_port, auth=auth, insecure=insecure,
        tls_cert=tls_cert, tls_key=tls_key,
        tls_ca=tls_ca, dimse_tls_port=dimse_tls_port, tls_client_cert=tls_client_cert,
        database_url=database_url, blob_store=blob_store, peers=peer,
        dimse_access=dimse_access, qa=qa,
        overwrite=overwrite, log_level=log_level, dimse_processes=dimse_processes,
        dimse_transport=dimse_transport,
        cors_origins=cors_origins, max_request_mb=max_request_mb, oidc_issuer=oidc_issuer,
        oidc_audience=oidc_audience, oidc_jwks_file=oidc_jwks_file,
        oidc_role_claim=oidc_role_claim, oidc_client_id=oidc_client_id,
        oidc_client_secret=oidc_client_secret, oidc_redirect_uri=oidc_redirect_uri, routes=route,
        modalities=modality, stable_seconds=stable_seconds, retention_days=retention_days,
        audit_syslog=audit_syslog, log_format=log_format, metrics_token=metrics_token,
        hl7_port=hl7_port,
        webhooks=webhook, webhook_secret=webhook_secret,
        change_retention_days=change_retention_days,
    )
    refusal = settings.exposed_without_auth
    if refusal is not None:
        err.print(f"pacs: error: {refusal}", soft_wrap=True, markup=False)
        raise typer.Exit(2)
    raise typer.Exit(root.serve(settings))


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (recursive)")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_store: BlobStoreUrl = None,
) -> None:
    """Import DICOM files through the same ingest path as C-STORE; exit 1 if any failed.

    Data sets without a Part 10 header are stored as STOW-RS stores them; every file that is
    not DICOM is listed with the reason."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        err.print(f"pacs: error: no such file or folder: {', '.join(missing)}")
        raise typer.Exit(2)
    settings = _settings(data_dir=data_dir, database_url=database_url, blob_store=blob_store)
    total = sum(1 for _ in iter_files(paths))
    with root.open_services(settings) as services, Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("import", total=total)
        summary = services.importer.import_paths(
            paths, on_file=lambda _path, _result: progress.advance(task)
        )
    counts = summary.counts
    out.print(
        f"stored: {counts[ImportResult.STORED]}, "
        f"already present: {counts[ImportResult.ALREADY_PRESENT]}, "
        f"not DICOM: {counts[ImportResult.NOT_DICOM]}, failed: {counts[ImportResult.FAILED]}"
    )
    for path, reason in summary.failures:
        out.print(f"failed: {path}: {reason}", soft_wrap=True, markup=False)
    for path, reason in summary.not_dicom:  # skipped, never silently: each with its reason
        out.print(f"not DICOM: {path}: {reason}", soft_wrap=True, markup=False)
    raise typer.Exit(1 if summary.failed else 0)


@app.command()
def check(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_store: BlobStoreUrl = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="remove orphan files and rows whose file is gone")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="check presence only, not sizes and SHA-256")
    ] = False,
    orphan_grace: Annotated[
        float,
        typer.Option("--orphan-grace", help="seconds: younger orphan files are kept (a store "
                     "may be committing); 0 when no server runs", min=0),
    ] = 120.0,
) -> None:
    """Compare the index with the blob store; exit 1 if anything is inconsistent."""
    settings = _settings(data_dir=data_dir, database_url=database_url, blob_store=blob_store)
    with root.open_services(settings) as services:
        report = services.consistency.check(
            verify_hashes=not quick, repair=repair, orphan_grace_s=orphan_grace
        )
    out.print(f"instances indexed: {report.instances}, files stored: {report.blobs}")
    for uid, key in report.missing:
        out.print(f"missing file: instance {uid} (blob {key})", soft_wrap=True)
    for key in report.orphans:
        out.print(f"orphan file: blob {key}", soft_wrap=True)
    for bad in report.mismatched:
        out.print(
            f"mismatch: instance {bad.sop_instance_uid}: size {bad.actual_size} (index "
            f"{bad.expected_size}), sha256 {bad.actual_sha256} (index {bad.expected_sha256})",
            soft_wrap=True,
        )
    if report.partial_files:
        out.print(f"partial files in tmp/: {report.partial_files} (each removed when its "
                  "server next starts, or by another server's start once it is gone)")
    if repair:
        out.print(
            f"repaired: {report.repaired_rows} index rows removed, "
            f"{report.repaired_orphans} orphan files removed"
        )
        remaining = report.mismatched or len(report.orphans) > report.repaired_orphans
        raise typer.Exit(1 if remaining else 0)
    out.print("consistent" if report.consistent else "INCONSISTENT")
    raise typer.Exit(0 if report.consistent else 1)


@app.command()
def purge(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_store: BlobStoreUrl = None,
    retention_days: Annotated[
        str | None, typer.Option("--retention-days", help="purge studies rejected longer "
                                 "ago than this [30; 0: every rejected study]"),
    ] = None,
) -> None:
    """Delete rejected studies past the retention period: index rows, then files."""
    settings = _settings(data_dir=data_dir, database_url=database_url, blob_store=blob_store,
                         retention_days=retention_days)
    with root.open_services(settings) as services:
        purged = services.workflow.purge(who="cli:purge")
    for uid in purged:
        out.print(f"purged: {uid}", soft_wrap=True)
    out.print(f"{len(purged)} rejected studies purged")


@app.command()
def conformance(
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="this server's AE title")
                        ] = None,
    dimse_port: Annotated[str | None, typer.Option("--dimse-port")] = None,
) -> None:
    """Print the DICOM Conformance Statement's tables (SOP classes, roles, transfer syntaxes),
    made from the presentation contexts this server negotiates."""
    settings = _settings(ae_title=ae_title, dimse_port=dimse_port)
    out.print(root.conformance_statement(settings), soft_wrap=True, markup=False)


@app.command()
def audit(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    study: Annotated[str | None, typer.Option("--study", help="one study's events")] = None,
    action: Annotated[str | None, typer.Option("--action", help="e.g. store, accept")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
) -> None:
    """Print the audit trail, newest first."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings, upgrade=False) as services:
        events = services.workflow.audit_events(study_instance_uid=study, action=action,
                                                limit=limit)
    for event in events:
        detail = " ".join(f"{k}={v}" for k, v in event.detail.items())
        out.print(f"{event.at:%Y-%m-%d %H:%M:%S} {event.actor} {event.action} "
                  f"{event.study_instance_uid or '-'} {event.outcome} {detail}".rstrip(),
                  soft_wrap=True, markup=False)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the index schema to the newest revision (Alembic)."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    described = root.upgrade_database(settings)
    out.print(f"index schema is up to date: {described}")


@tls_app.command("check")
def tls_check(
    cert: Annotated[Path, typer.Option("--cert", help="certificate, then its intermediate CAs "
                                       "(PEM), as the server presents them")],
    key: Annotated[Path, typer.Option("--key", help="the certificate's private key (PEM)")],
    ca: Annotated[Path, typer.Option("--ca", help="the CA certificates peers trust (PEM)")],
    host: Annotated[str | None, typer.Option("--host", help="a DNS name or IP address the "
                                              "certificate must carry")] = None,
) -> None:
    """Verify the chain to the CA, the key and the name; exit 1 on any problem, as a peer would."""
    try:
        files = tls.read_tls_files(cert, key, ca)
    except tls.UnreadableTlsFile as error:
        err.print(f"pacs: error: {error}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from None
    report = tls.check_tls(files, host=host)
    leaf = report.leaf
    for label, value in [
        ("subject", leaf.subject),
        ("issuer", leaf.issuer),
        ("names", ", ".join(leaf.names) or "none (no subjectAltName)"),
        ("not before", f"{leaf.not_before:%Y-%m-%d %H:%M:%S} UTC"),
        ("not after", f"{leaf.not_after:%Y-%m-%d %H:%M:%S} UTC ({report.days_left} days left)"),
        ("key", leaf.key),
    ]:
        out.print(f"{label + ':':<12}{value}", soft_wrap=True, markup=False)
    out.print("what a peer will see:")
    for position, sent in enumerate(report.presented):
        out.print(f"  {position}: {sent.subject} (issued by {sent.issuer}; {sent.key})",
                  soft_wrap=True, markup=False)
    if report.anchor is not None:
        out.print(f"  trusted through: {report.anchor.subject} (from {ca.name})",
                  soft_wrap=True, markup=False)
    for problem in report.problems:
        out.print(f"problem: {problem}", soft_wrap=True, markup=False)
    if report.ok:
        out.print(f"OK: chain verified to {ca.name}, key matches"
                  + (f", {host} is in the names" if host else ""), soft_wrap=True, markup=False)
    raise typer.Exit(0 if report.ok else 1)


def _when(at: dt.datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at is not None else "-"


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="unique name, recorded in the audit trail")],
    role: Annotated[str, typer.Option("--role", help="viewer | uploader | qa | admin")],
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", help="valid for this many days [no expiry]")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a token and print its secret, once: the index keeps only a hash of it."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings) as services:
        try:
            record, secret = services.tokens.create(name, role, expires_days, who="cli:token")
        except TokenError as error:
            err.print(f"pacs: error: {error}", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
    expiry = f"expires {_when(record.expires_at)} UTC" if record.expires_at else "no expiry"
    out.print(f"token {record.name!r} (role {record.role}, {expiry}):", markup=False)
    out.print(secret, soft_wrap=True, markup=False)
    out.print("Keep it now: it will not be shown again.", markup=False)


@token_app.command("list")
def token_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Every token: name, role, when made, expiring, last used and revoked (UTC); no secrets."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings) as services:
        records = services.tokens.list()
    rows = [("NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "REVOKED")] + [
        (r.name, r.role, _when(r.created_at), _when(r.expires_at), _when(r.last_used_at),
         _when(r.revoked_at)) for r in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        out.print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                  .rstrip(), soft_wrap=True, markup=False)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token: it stops working at once; exit 1 if there is no token of that name."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings) as services:
        revoked = services.tokens.revoke(name, who="cli:token")
    if not revoked:
        err.print(f"pacs: error: no token named {name!r}", soft_wrap=True, markup=False)
        raise typer.Exit(1)
    out.print(f"revoked: {name}", soft_wrap=True, markup=False)


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        out.print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                  .rstrip(), soft_wrap=True, markup=False)


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


@ae_app.command("add")
def ae_add(
    ae_title: Annotated[str, typer.Argument(metavar="TITLE", help="the remote AE title")],
    host: Annotated[str, typer.Option(
        "--host", help="addresses it may call from, comma separated: IP addresses, networks "
        "(10.1.2.0/24), names, or * (any address); the first is where a move destination is "
        "reached")],
    port: Annotated[int | None, typer.Option(
        "--port", help="its port (needed for --move-destination)")] = None,
    allow: Annotated[str, typer.Option(
        "--allow", help="services it may ask for, comma separated: store, find, move, get "
        "[none: C-ECHO only]")] = "",
    move_destination: Annotated[bool, typer.Option(
        "--move-destination", help="a C-MOVE destination and routing target")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a remote AE; running servers apply it within a few seconds."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings) as services:
        try:
            record = services.ae_registry.add(
                ae_title, hosts=_split(host), port=port, allow=_split(allow),
                move_destination=move_destination, who="cli:ae")
        except AeRegistryError as error:
            err.print(f"pacs: error: {error}", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
    allowed = ", ".join(record.services) or "C-ECHO only"
    out.print(f"added: {record.ae_title} (hosts {', '.join(record.hosts)}; allow {allowed}"
              + (f"; move destination at {record.hosts[0]}:{record.port}"
                 if record.move_destination else "") + ")", soft_wrap=True, markup=False)


@ae_app.command("list")
def ae_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Every registered AE: hosts, port, allowed services, move destination, source."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings) as services:
        records = services.ae_registry.list()
    _table([("AE TITLE", "HOSTS", "PORT", "ALLOW", "MOVE DESTINATION", "SOURCE", "CREATED")] + [
        (r.ae_title, ",".join(r.hosts), str(r.port) if r.port is not None else "-",
         ",".join(r.services) or "-", "yes" if r.move_destination else "no", r.source,
         _when(r.created_at)) for r in records
    ])


@ae_app.command("remove")
def ae_remove(
    ae_title: Annotated[str, typer.Argument(metavar="TITLE", help="the remote AE title")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Remove a registered AE; exit 1 if there is none of that title."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    with root.open_services(settings) as services:
        removed = services.ae_registry.remove(ae_title, who="cli:ae")
    if not removed:
        err.print(f"pacs: error: no AE titled {ae_title.strip()!r}", soft_wrap=True,
                  markup=False)
        raise typer.Exit(1)
    out.print(f"removed: {ae_title.strip()}", soft_wrap=True, markup=False)


def main() -> None:
    try:
        sys.exit(app())
    except OutOfResources as error:  # storage that cannot be reached (the blob store at start)
        err.print(f"pacs: error: {error}", soft_wrap=True, markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
