"""Checking a TLS certificate, its key and its CA the way a peer will, before a listener uses them.

``pacs tls check`` reports what :func:`check_tls` finds; the TLS listeners (DICOM TLS, PS3.15
Annex B; HTTPS) load the same files through :func:`read_tls_files`. The seed's lesson is that a
chain must be verified link by link, by signature, never by matching names: a certificate from
another CA that merely carries the expected issuer name is refused here as it is by OpenSSL.

What is checked (RFC 5280 6.1, simplified to what a TLS peer does):

* the path: the leaf, then each issuer found among the certificates that follow it in the
  certificate file (what the server presents) or in the CA bundle (the trust anchors), each link's
  signature verified with the issuer's public key, ending at a certificate of the CA bundle;
* every issuer is a CA (basicConstraints CA:TRUE, path length respected; keyUsage, when present,
  allows keyCertSign);
* every certificate of the path is valid now;
* the leaf's keyUsage and extendedKeyUsage, when present, allow the purpose (server or client
  authentication, RFC 5280 4.2.1.3 and 4.2.1.12);
* the private key is the one of the leaf's public key;
* with a host, the name is among the subjectAltName entries (RFC 6125 6.4: the common name is
  not consulted; a wildcard stands for exactly one left-most DNS label).

It does not consult revocation lists or OCSP, and does not check name constraints.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from pacs.services.errors import PacsError

MAX_FILE_BYTES = 1024 * 1024  # a PEM bundle of hundreds of CAs fits; a wrong file is not read whole
MAX_PATH_LENGTH = 8  # issuers followed from the leaf before giving up (a loop, a huge bundle)
MIN_RSA_BITS = 2048  # BCP 195 (RFC 9325 4.1), which the PS3.15 Annex B profiles follow


class UnreadableTlsFile(PacsError):
    """A certificate, key or CA file that cannot be read or holds no usable PEM or DER content."""


class Purpose(StrEnum):
    """What the leaf certificate is for: the extendedKeyUsage a peer requires of it."""

    SERVER = "serverAuth"
    CLIENT = "clientAuth"


_EKU_OID = {Purpose.SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
            Purpose.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class TlsFiles:
    """The parsed content of the three files, with the names they were given by."""

    chain: tuple[x509.Certificate, ...]  # the leaf first, then what the server presents with it
    key: PrivateKeyTypes
    anchors: tuple[x509.Certificate, ...]  # the CA bundle
    ca_name: str = "the CA file"


@dataclass(frozen=True)
class CertificateInfo:
    """What a person needs to recognise a certificate."""

    subject: str
    issuer: str
    names: tuple[str, ...]  # subjectAltName entries, "DNS:host" / "IP:addr"
    not_before: datetime
    not_after: datetime
    key: str  # "RSA 2048 bits", "EC secp256r1 (256 bits)", "Ed25519"
    is_ca: bool

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateInfo:
        return cls(
            subject=cert.subject.rfc4514_string() or "(empty subject)",
            issuer=cert.issuer.rfc4514_string() or "(empty issuer)",
            names=_san_strings(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            key=describe_key(cert.public_key()),
            is_ca=_is_ca(cert),
        )


@dataclass(frozen=True)
class TlsReport:
    """The outcome of :func:`check_tls`: the facts, and one sentence per problem found."""

    leaf: CertificateInfo
    presented: tuple[CertificateInfo, ...]  # what a peer receives, in the order it is sent
    anchor: CertificateInfo | None  # the CA of the bundle the path ends at, when one was found
    days_left: int  # whole days until the leaf expires (negative once expired)
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def read_tls_files(cert: Path, key: Path, ca: Path) -> TlsFiles:
    """Parse the three files (PEM or DER); raise :class:`UnreadableTlsFile` naming the file."""
    chain = _read_certificates(cert)
    anchors = _read_certificates(ca)
    data = _read_bounded(key)
    try:
        private_key = (serialization.load_pem_private_key(data, password=None)
                       if b"-----BEGIN" in data
                       else serialization.load_der_private_key(data, password=None))
    except TypeError:  # cryptography's way of saying "encrypted, and no password was given"
        raise UnreadableTlsFile(f"{key}: the private key is encrypted; give an unencrypted key "
                                "(e.g. openssl pkey -in KEY -out KEY.plain)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UnreadableTlsFile(f"{key}: no private key in it (PEM or DER)") from None
    return TlsFiles(chain=chain, key=private_key, anchors=anchors, ca_name=ca.name)


def check_tls(files: TlsFiles, *, host: str | None = None, purpose: Purpose = Purpose.SERVER,
              now: datetime | None = None) -> TlsReport:
    """Verify the chain, the key and (with ``host``) the name; never raises on a bad certificate."""
    now = now or datetime.now(UTC)
    leaf = files.chain[0]
    problems: list[str] = []
    path, anchor = _build_path(files, problems)
    for position, cert in enumerate([*path, *([anchor] if anchor and anchor not in path else [])]):
        problems.extend(_validity_problems(cert, now, "the certificate" if position == 0
                                           else f"the CA certificate {_name(cert)}"))
    problems.extend(_order_problems(files.chain, path))
    problems.extend(_usage_problems(leaf, purpose))
    problems.extend(_key_problems(leaf, files.key))
    if host is not None:
        problems.extend(_host_problems(leaf, host))
    return TlsReport(
        leaf=CertificateInfo.of(leaf),
        presented=tuple(CertificateInfo.of(cert) for cert in files.chain),
        anchor=CertificateInfo.of(anchor) if anchor else None,
        days_left=(leaf.not_valid_after_utc - now).days,
        problems=tuple(dict.fromkeys(problems)),  # one line per problem, first-found order
    )


def describe_key(key: CertificatePublicKeyTypes) -> str:
    """The key's algorithm and size, as a person compares it with a policy."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name} ({key.curve.key_size} bits)"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size} bits"
    return type(key).__name__


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UnreadableTlsFile(f"{path}: {error.strerror or 'cannot be read'}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableTlsFile(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; "
                                "not a certificate or key file")
    return data


def _read_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    data = _read_bounded(path)
    try:
        if b"-----BEGIN" in data:
            return tuple(x509.load_pem_x509_certificates(data))
        return (x509.load_der_x509_certificate(data),)
    except ValueError:
        raise UnreadableTlsFile(f"{path}: no certificate in it (PEM or DER)") from None


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """The issuer's name is the certificate's issuer name and its key verifies the signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _build_path(files: TlsFiles, problems: list[str]
                ) -> tuple[list[x509.Certificate], x509.Certificate | None]:
    """The path from the leaf up to (not including) a certificate of the CA bundle, and that one.

    Each step looks in the bundle first, so a path ends at the first trusted CA, as OpenSSL's
    ``X509_V_FLAG_PARTIAL_CHAIN`` does; then among the certificates presented with the leaf.
    """
    path = [files.chain[0]]
    intermediates = list(files.chain[1:])
    while len(path) <= MAX_PATH_LENGTH:
        current = path[-1]
        anchor = next((ca for ca in files.anchors if _signed_by(current, ca)), None)
        if anchor is not None:
            if anchor != current:  # a self-signed certificate trusted as itself signs nothing
                problems.extend(_issuer_problems(anchor, below=len(path) - 1))
            return path, anchor
        issuer = next((c for c in intermediates if c not in path and _signed_by(current, c)), None)
        if issuer is None:
            problems.append(_no_issuer_problem(files, current, first=len(path) == 1))
            return path, None
        problems.extend(_issuer_problems(issuer, below=len(path) - 1))
        path.append(issuer)
    problems.append(f"the chain is longer than {MAX_PATH_LENGTH} certificates")
    return path, None


def _no_issuer_problem(files: TlsFiles, cert: x509.Certificate, *, first: bool) -> str:
    """Say why no issuer was found, in the words a person will act on."""
    subject = "the certificate" if first else f"the intermediate {_name(cert)}"
    same_name = [c for c in (*files.anchors, *files.chain[1:]) if c.subject == cert.issuer]
    if same_name:  # a CA of that name exists, but it did not sign this: another key
        return (f"{subject} is not signed by the CA in {files.ca_name} (a CA named "
                f"{cert.issuer.rfc4514_string()} is there, but its key does not verify the "
                "signature: another CA of the same name)")
    if cert.issuer == cert.subject:
        return f"{subject} is self-signed and not in {files.ca_name}"
    return (f"{subject} is not signed by a CA in {files.ca_name} (issuer: "
            f"{cert.issuer.rfc4514_string()}; if that is an intermediate CA, append it to the "
            "certificate file after the certificate)")


def _issuer_problems(issuer: x509.Certificate, *, below: int) -> list[str]:
    """An issuer must be a CA allowed to sign certificates (RFC 5280 4.2.1.9, 4.2.1.3).

    ``below`` counts the intermediate CAs between this issuer and the leaf (pathLenConstraint).
    """
    name = _name(issuer)
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return [f"{name} issued a certificate of the chain but is not a CA "
                "(no basicConstraints CA:TRUE)"]
    problems = []
    if not constraints.ca:
        problems.append(f"{name} issued a certificate of the chain but is not a CA "
                        "(basicConstraints CA:FALSE)")
    elif constraints.path_length is not None and below > constraints.path_length:
        problems.append(f"{name} allows {constraints.path_length} intermediate CAs below it "
                        f"(pathlen), the chain has {below}")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return problems
    if not usage.key_cert_sign:
        problems.append(f"{name}'s keyUsage does not allow signing certificates (keyCertSign)")
    return problems


def _validity_problems(cert: x509.Certificate, now: datetime, subject: str) -> list[str]:
    if now > cert.not_valid_after_utc:
        return [f"{subject} expired on {cert.not_valid_after_utc:%Y-%m-%d}"]
    if now < cert.not_valid_before_utc:
        return [f"{subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"]
    return []


def _order_problems(presented: Sequence[x509.Certificate], path: list[x509.Certificate]
                    ) -> list[str]:
    """A server sends its certificate file as it is: leaf, then each issuer (RFC 5246 7.4.2)."""
    used = [cert for cert in presented if cert in path]
    problems = [f"the certificate file holds {_name(cert)}, which is not in the chain"
                for cert in presented if cert not in path]
    if used != path[: len(used)]:
        problems.append("the certificate file is not in order (the certificate first, then "
                        "each issuer); some peers refuse such a chain")
    return problems


def _usage_problems(leaf: x509.Certificate, purpose: Purpose) -> list[str]:
    problems = []
    try:
        extended = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if (_EKU_OID[purpose] not in extended
                and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in extended):
            allowed = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in extended)
            problems.append(f"the certificate's extendedKeyUsage does not allow {purpose} "
                            f"(it allows: {allowed})")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return problems
    # TLS signs the handshake (digitalSignature); RSA key transport needs keyEncipherment.
    if not (usage.digital_signature or usage.key_encipherment):
        problems.append("the certificate's keyUsage allows neither digitalSignature nor "
                        "keyEncipherment, so it cannot authenticate a TLS handshake")
    return problems


def _key_problems(leaf: x509.Certificate, key: PrivateKeyTypes) -> list[str]:
    problems = []
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        problems.append("the key does not match the certificate")
    public = leaf.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        problems.append(f"the certificate's RSA key has {public.key_size} bits; BCP 195 "
                        f"requires at least {MIN_RSA_BITS}")
    return problems


def _san_strings(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [f"DNS:{name}" for name in names.get_values_for_type(x509.DNSName)]
    ips = [f"IP:{address}" for address in names.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _host_problems(leaf: x509.Certificate, host: str) -> list[str]:
    """RFC 6125 6.4 (DNS names, one left-most wildcard label) and RFC 5280 4.2.1.6 (IP)."""
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [f"{host} is not in the certificate's names (no subjectAltName; peers do not "
                "look at the common name)"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        if any(_dns_matches(pattern, wanted)
               for pattern in names.get_values_for_type(x509.DNSName)):
            return []
    else:
        if address in names.get_values_for_type(x509.IPAddress):
            return []
    listed = ", ".join(_san_strings(leaf)) or "none"
    return [f"{host} is not in the certificate's names (SANs: {listed})"]


def _dns_matches(pattern: str, host: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if not pattern.startswith("*."):
        return pattern == host
    head, _, rest = host.partition(".")
    return bool(head) and rest == pattern[2:]
