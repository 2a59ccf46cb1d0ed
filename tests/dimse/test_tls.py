"""DICOM TLS (PS3.15 Annex B) on its own port, against a real ``pacs serve`` (issue 13, item 7).

DCMTK's ``echoscu``, ``storescu`` and ``findscu`` with ``+tls``, and ``getscu`` (which Debian's
DCMTK 3.6.7 builds without ``+tls``) through a TLS client tunnel (``TCP_NODELAY=1``), with
certificates the tests make (``tests/support/pki.py``): a client whose certificate chains to
the CA, is valid and names its address is served; one from another CA, an expired one, one for
another address, one without a certificate (when required), plain DICOM, TLS 1.1 and a suite
outside BCP 195 are refused, closed and audited, and the server goes on serving. The handshake
happens where the association is served (two DIMSE processes here), so a client that never
completes it blocks no one and is closed within the read timeout.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs.services.tls_listener import PeerCertificate
from pacs.settings import Settings
from storage.index.audit import AuditRecord
from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.pki import Issued, client_cert, issue, make_ca, server_cert
from tests.support.server import PacsServer, free_port, own_index
from tests.support.tls_tunnel import TlsTunnel
from tests.support.wait import until

STUDY = f.make_uid("dimse-tls", "study")
HOSTILE = "127.0.0.2"
MODALITY = "CN=CT1 modality"
A_ABORT = bytes.fromhex("07000000000400000200")  # PS3.8 9.3.8: from the service provider
SERVER_ENDED_HANDSHAKE = "ALERT|UNEXPECTED_EOF|EOF occurred"
"""The server refused (an alert, or the connection closed without one), not a client unable to
start: that would be ``NO_PROTOCOLS_AVAILABLE`` or ``NO_CIPHERS_AVAILABLE``."""


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path
    cert: Path  # the server's, for localhost and 127.0.0.1
    key: Path

    def client(self, name: str) -> tuple[str, ...]:
        """DCMTK's TLS options with the client certificate ``name`` (see :func:`pki`)."""
        return dcmtk.tls(self.folder / f"{name}.key", self.folder / f"{name}.pem", self.ca)

    def context(self, name: str | None = "modality") -> ssl.SSLContext:
        """A Python client context trusting the CA, presenting certificate ``name``."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if name is not None:
            context.load_cert_chain(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        return context

    def server_args(self, port: int, mode: str = "required") -> list[str]:
        return ["--dimse-tls-port", str(port), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key), "--tls-ca", str(self.ca),
                "--tls-client-cert", mode]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca("pacs test CA")
    impostor = make_ca("pacs test CA")  # the same name, another key
    cert, key = server_cert(ca).write(folder, "server")
    here = ("127.0.0.1",)
    clients: dict[str, Issued] = {
        "modality": client_cert(ca, "CT1 modality", ips=here),
        "workstation": client_cert(ca, "workstation", dns=("localhost",)),
        "other-ca": client_cert(impostor, "CT1 modality", ips=here),
        "expired": client_cert(ca, "old modality", ips=here,
                               not_before=datetime.now(UTC) - timedelta(days=3), days=1),
        "other-address": client_cert(ca, "CT2 modality", ips=("127.0.0.9",)),
        "server-only": issue(ca, "not a client", ips=here, usage="server"),
    }
    for name, issued in clients.items():
        issued.write(folder, name)
    return Pki(folder, ca.write_cert(folder / "ca.pem"), cert, key)


@dataclass
class TlsArchive:
    server: PacsServer
    tls_port: int
    pki: Pki
    workdir: Path

    def echo(self, client: str | None = "modality", *, port: int | None = None
             ) -> subprocess.CompletedProcess[str]:
        extra = self.pki.client(client) if client else ()
        return dcmtk.echoscu(port or self.tls_port, extra=extra)

    def refusals(self) -> list[AuditRecord]:
        with self.server.services() as services:
            return services.workflow.audit_events(action="tls-refused")


def _start(pki: Pki, root: Path, database_url: str, mode: str = "required",
           read_timeout: float | None = None) -> TlsArchive:
    port = free_port()
    server = PacsServer(data_dir=root / "data", database_url=database_url, tls_ca=pki.ca,
                        extra_args=[*pki.server_args(port, mode), "--dimse-processes", "2"])
    if read_timeout is not None:
        server.start_env = {"PACS_DIMSE_READ_TIMEOUT": str(read_timeout)}
    server.start()
    return TlsArchive(server, port, pki, root)


@pytest.fixture(scope="module")
def archive(pki: Pki, module_database_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[TlsArchive]:
    """Client certificates required; two DIMSE processes (the handshake happens in both)."""
    archive = _start(pki, tmp_path_factory.mktemp("tls"), module_database_url)
    try:
        yield archive
    finally:
        assert archive.server.stop() == 0


# -- served over TLS ------------------------------------------------------------------------


def test_echo_store_find_get_over_tls_with_the_client_subject_in_the_audit(
    archive: TlsArchive,
) -> None:
    echo = archive.echo()
    assert echo.returncode == 0, dcmtk.status_lines(echo)

    sent = [f.write_part10(f.ct_instance(StudyInstanceUID=STUDY, PatientID="TLS-1",
                                         InstanceNumber=number, seed=number),
                           archive.workdir / f"{number}.dcm") for number in (1, 2)]
    stored = dcmtk.storescu(archive.tls_port, sent, workdir=archive.workdir,
                            extra=archive.pki.client("modality"))
    assert dcmtk.successes(stored) == 2, dcmtk.status_lines(stored)

    found, responses = dcmtk.findscu(
        archive.tls_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}",
                           "PatientID"],
        workdir=archive.workdir, extra=archive.pki.client("modality"))
    assert found.returncode == 0, dcmtk.status_lines(found)
    assert [str(r.PatientID) for r in responses] == ["TLS-1"]

    # Debian's getscu has no +tls: it speaks through a TLS client tunnel with the certificate
    output = archive.workdir / "got"
    with TlsTunnel(archive.tls_port, archive.pki.context()) as tunnel:
        got = dcmtk.getscu(tunnel, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"],
                           output=output)
    assert got.returncode == 0, dcmtk.status_lines(got)
    received = {str(pydicom.dcmread(path).SOPInstanceUID) for path in output.iterdir()}
    assert received == {str(pydicom.dcmread(path).SOPInstanceUID) for path in sent}

    # who did it, in the audit trail: calling AE, address and the certificate's subject
    actor = re.compile(rf"dimse:(STORESCU|FINDSCU|GETSCU)@127\.0\.0\.1(:\d+)? tls:{MODALITY}")
    with archive.server.services() as services:
        stores = services.workflow.audit_events(study_instance_uid=STUDY, action="store")
        queries = until("the C-FIND audited", lambda: [
            event for event in services.workflow.audit_events(action="query")
            if event.actor.startswith("dimse:FINDSCU")], 30)
        retrievals = services.workflow.audit_events(action="retrieve")
    assert len(stores) == 2
    for event in [*stores, *queries, *retrievals]:
        assert actor.fullmatch(event.actor), event.actor
    assert stores[0].actor.startswith("dimse:STORESCU@127.0.0.1:")
    assert retrievals and retrievals[0].actor.startswith("dimse:GETSCU@127.0.0.1")


def test_the_plain_port_keeps_working_and_audits_no_tls_subject(archive: TlsArchive) -> None:
    echo = dcmtk.echoscu(archive.server.dimse_port)
    assert echo.returncode == 0, dcmtk.status_lines(echo)
    study = f.make_uid("dimse-tls", "plain")
    dcmtk.store_datasets(archive.server.dimse_port, [f.ct_instance(StudyInstanceUID=study)],
                         workdir=archive.workdir / "plain")
    with archive.server.services() as services:
        [store] = services.workflow.audit_events(study_instance_uid=study, action="store")
    assert store.actor.startswith("dimse:STORESCU@127.0.0.1:") and " tls:" not in store.actor


def test_a_dns_name_that_resolves_to_the_client_names_it(archive: TlsArchive) -> None:
    """``localhost`` in the certificate's subjectAltName, the client at 127.0.0.1."""
    echo = archive.echo("workstation")
    assert echo.returncode == 0, dcmtk.status_lines(echo)


def test_both_processes_serve_tls_associations(archive: TlsArchive) -> None:
    """The listening process hands every other connection to its worker, raw; each handshakes
    where it is served (the log names the process of each association)."""
    before = len(archive.server.log().splitlines())
    for _ in range(4):
        echo = archive.echo()
        assert echo.returncode == 0, dcmtk.status_lines(echo)
    lines = archive.server.log().splitlines()[before:]
    served = {match[1] for line in lines
              if (match := re.search(r"\[pid (\d+)\] pacs\.dimse\.handlers: association from "
                                     r"ECHOSCU .* over TLS \(CN=CT1 modality\)", line))}
    assert len(served) == 2, lines


def test_a_tls_1_2_client_with_a_bcp_195_suite_is_served(archive: TlsArchive) -> None:
    """pynetdicom as the client: TLS 1.2 with ECDHE + AES-GCM, then a C-ECHO."""
    context = archive.pki.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    ae = AE(ae_title="PYCLIENT")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.tls_port, ae_title="PACS",
                         tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    try:
        tls = assoc.dul.socket.socket
        assert isinstance(tls, ssl.SSLSocket)
        assert tls.version() == "TLSv1.2"
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


# -- refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "reason"), [
    ("other-ca", "client certificate refused: unable to get local issuer certificate"),
    ("expired", "client certificate refused: certificate has expired"),
    ("other-address", "client certificate is not for this address"),
    ("server-only", "client certificate refused: unsuitable certificate purpose"),
    (None, "no client certificate"),
])
def test_refused_clients_are_closed_and_audited(
    archive: TlsArchive, client: str | None, reason: str
) -> None:
    if client is None:  # DCMTK: TLS without a certificate of its own
        refused = dcmtk.echoscu(archive.tls_port, extra=("+tla", "+cf", str(archive.pki.ca)))
    else:
        refused = archive.echo(client)
    assert refused.returncode != 0, dcmtk.status_lines(refused)
    assert "Echo Response (Success)" not in dcmtk.status_lines(refused)
    events = until(f"the refusal audited: {reason}", lambda: [
        event for event in archive.refusals() if event.outcome == reason], 30)
    assert events[0].actor.startswith("dimse:127.0.0.1")
    if client == "other-address":
        assert events[0].actor == "dimse:127.0.0.1 tls:CN=CT2 modality"
    assert archive.echo().returncode == 0  # the server goes on serving others


def test_plain_dicom_on_the_tls_port_is_refused(archive: TlsArchive) -> None:
    plain = dcmtk.echoscu(archive.tls_port)
    assert plain.returncode != 0
    until("the refusal audited", lambda: [
        event for event in archive.refusals() if event.outcome.startswith("not TLS")], 30)
    assert archive.echo().returncode == 0


def _handshake(archive: TlsArchive, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", archive.tls_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return str(tls.version())


def test_tls_below_1_2_is_refused(archive: TlsArchive) -> None:
    old = archive.pki.context()
    with warnings.catch_warnings():  # the setters warn that TLS 1.0 and 1.1 are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client can speak TLS 1.1: the server refuses
    with pytest.raises(ssl.SSLError, match=SERVER_ENDED_HANDSHAKE):
        _handshake(archive, old)
    until("the refusal audited", lambda: [
        event for event in archive.refusals() if event.outcome == "TLS version below 1.2"], 30)


def test_a_suite_outside_bcp_195_is_refused(archive: TlsArchive) -> None:
    """CBC suites are TLS 1.2 suites OpenSSL allows by default; BCP 195 does not."""
    cbc = archive.pki.context()
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError, match=SERVER_ENDED_HANDSHAKE):
        _handshake(archive, cbc)
    until("the refusal audited", lambda: [
        event for event in archive.refusals()
        if event.outcome == "no BCP 195 cipher suite offered"], 30)


# -- optional client certificates; stalled handshakes --------------------------------------


@pytest.fixture(scope="module")
def optional(pki: Pki, module_database_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[TlsArchive]:
    """Client certificates optional, a read timeout of 10 s."""
    root = tmp_path_factory.mktemp("tls-optional")
    archive = _start(pki, root, own_index(module_database_url, root), mode="optional",
                     read_timeout=10)
    try:
        yield archive
    finally:
        assert archive.server.stop() == 0


def test_optional_accepts_no_certificate_but_checks_one_that_is_presented(
    optional: TlsArchive,
) -> None:
    anonymous = dcmtk.echoscu(optional.tls_port, extra=("+tla", "+cf", str(optional.pki.ca)))
    assert anonymous.returncode == 0, dcmtk.status_lines(anonymous)
    assert optional.echo("modality").returncode == 0
    assert optional.echo("other-ca").returncode != 0
    assert optional.echo("other-address").returncode != 0


def _silent(port: int, payload: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.bind((HOSTILE, 0))
    sock.connect(("127.0.0.1", port))
    if payload:
        sock.sendall(payload)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def test_a_stalled_handshake_blocks_no_one_and_is_closed_within_the_read_timeout(
    optional: TlsArchive,
) -> None:
    port = optional.tls_port
    # a TLS record header announcing a 512-byte ClientHello, and 5 bytes of it
    partial_hello = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03"
    stalled = [_silent(port) for _ in range(6)] + [_silent(port, partial_hello)
                                                   for _ in range(2)]
    # a client that completes the handshake, then stops in the middle of a PDU
    context = optional.pki.context()
    context.check_hostname = False
    mid_pdu = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    mid_pdu.sendall(b"\x01\x00\x00\x00\x01\x00")  # an A-ASSOCIATE-RQ of 256 bytes: 0 sent
    try:
        for _ in range(4):  # both processes serve, while the stalled sockets are open
            echo = optional.echo()
            assert echo.returncode == 0, dcmtk.status_lines(echo)
        assert not any(_closed(sock) for sock in stalled)  # still within the 10 s

        until("every stalled handshake closed", lambda: all(_closed(s) for s in stalled), 60)
        mid_pdu.settimeout(60)
        answer = b"".join(iter(lambda: mid_pdu.recv(1024), b""))  # until the server closes
        assert answer in (b"", A_ABORT)

        def stalled_handshakes() -> list[AuditRecord]:
            events = [event for event in optional.refusals()
                      if event.outcome == "no TLS handshake within 10 s"]
            return events if sum(event.detail["count"] for event in events) >= 8 else []

        events = until("the stalled handshakes audited", stalled_handshakes, 60)
        assert {event.actor for event in events} == {f"dimse:{HOSTILE}"}
        assert optional.echo().returncode == 0
    finally:
        for sock in stalled:
            sock.close()
        mid_pdu.close()


# -- settings -------------------------------------------------------------------------------


def test_the_tls_port_needs_a_certificate_and_a_ca_unless_none(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs --tls-cert and --tls-key"):
        Settings(data_dir=tmp_path, dimse_tls_port=2762)
    with pytest.raises(ValidationError, match="required needs --tls-ca"):
        Settings(data_dir=tmp_path, dimse_tls_port=2762, tls_cert=pki.cert, tls_key=pki.key)
    with pytest.raises(ValidationError, match="optional needs --tls-ca"):
        Settings(data_dir=tmp_path, dimse_tls_port=2762, tls_cert=pki.cert, tls_key=pki.key,
                 tls_client_cert="optional")
    assert Settings(data_dir=tmp_path, dimse_tls_port=2762, tls_cert=pki.cert, tls_key=pki.key,
                    tls_client_cert="none").dimse_tls_port == 2762
    # HTTPS alone needs no CA, whatever the client certificate mode
    assert Settings(data_dir=tmp_path, tls_cert=pki.cert, tls_key=pki.key).dimse_tls_port is None
    with pytest.raises(ValidationError, match="no PEM CA certificate"):
        Settings(data_dir=tmp_path, tls_ca=pki.key)


def test_serve_with_a_tls_port_and_no_certificate_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve", "--data-dir", str(tmp_path),
         "--dimse-tls-port", "2762"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("pacs: error: --dimse-tls-port: needs --tls-cert and "
                                     "--tls-key (the server's certificate)")


# -- whom a client certificate names --------------------------------------------------------


def _names(ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> PeerCertificate:
    return PeerCertificate("CN=x", tuple(ipaddress.ip_address(ip) for ip in ips), dns)


def test_a_certificate_names_its_address_or_a_dns_name_resolving_to_it() -> None:
    def resolver(name: str) -> list[str]:
        return {"ct1.example": ["10.0.0.5", "fd00::5"]}.get(name, [])

    assert _names(ips=("10.0.0.5",)).names("10.0.0.5", resolver)
    assert _names(ips=("10.0.0.5",)).names("::ffff:10.0.0.5", resolver)  # dual-stack listener
    assert not _names(ips=("10.0.0.5",)).names("10.0.0.6", resolver)
    assert _names(dns=("ct1.example",)).names("10.0.0.5", resolver)
    assert _names(dns=("ct1.example.",)).names("fd00::5", resolver)
    assert not _names(dns=("ct1.example",)).names("10.0.0.6", resolver)
    assert not _names(dns=("*.example",)).names("10.0.0.5", lambda _: ["10.0.0.5"])
    assert not _names().names("10.0.0.5", resolver)  # no subjectAltName: the CN is not read
