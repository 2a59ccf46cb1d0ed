"""What a TLS listener does with the files ``pacs tls check`` checks (``tls.py``): its BCP 195
server context, and judging whom a client's certificate names.

Used by the DICOM TLS listener (PS3.15 Annex B; ``pacs/dimse/tls.py``) and, for the context's
hardening, by HTTPS. ``cryptography`` is imported only when a client certificate is read: the
DIMSE processes of a server without TLS do not carry it (about 8 MB each).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BCP195_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""The TLS 1.2 cipher suites of BCP 195 (RFC 9325 4.2; the profiles of PS3.15 Annex B): ephemeral
ECDH key exchange (forward secrecy) with an AEAD cipher, AES-GCM or ChaCha20-Poly1305, for RSA
and ECDSA certificates alike. TLS 1.3's suites are all of that kind and are left as OpenSSL has
them."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]


def harden_tls(context: ssl.SSLContext) -> None:
    """A server context to BCP 195: TLS 1.2 at least (RFC 8996 deprecates 1.0 and 1.1), its
    AEAD + ECDHE suites only, the server's order of preference, no TLS compression (CRIME),
    no renegotiation started by the client (RFC 9325 3.5)."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    context.options |= (ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
                        | ssl.OP_NO_RENEGOTIATION)


def server_context(cert: Path, key: Path, *, ca: Path | None = None,
                   client_certs: ssl.VerifyMode = ssl.CERT_NONE) -> ssl.SSLContext:
    """A hardened server context presenting ``cert`` (with its chain) and ``key``; with
    ``client_certs`` CERT_REQUIRED or CERT_OPTIONAL, a client's certificate must chain to a CA
    of ``ca``, be valid now and allow clientAuth (OpenSSL checks all three).
    Raises ``ssl.SSLError`` or ``OSError`` for unusable files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key, password=lambda: b"")  # an encrypted key: refused
    harden_tls(context)
    if client_certs != ssl.CERT_NONE:
        if ca is None:
            raise ValueError("client certificates are verified against a CA file: none given")
        context.load_verify_locations(cafile=str(ca))
    context.verify_mode = client_certs
    return context


def resolve(name: str) -> list[str]:
    """The addresses ``name`` resolves to (the system's resolver; [] when it does not)."""
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]) for info in found]


@dataclass(frozen=True)
class PeerCertificate:
    """A TLS client's certificate, as a listener judges whom it names."""

    subject: str  # RFC 4514, e.g. "CN=ct1.example,O=Radiology"
    ips: tuple[IpAddress, ...]
    dns: tuple[str, ...]

    @classmethod
    def of(cls, der: bytes) -> PeerCertificate:
        """Read a DER certificate (as ``SSLSocket.getpeercert(binary_form=True)`` gives it);
        ``ValueError`` when it cannot be parsed."""
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return cls(subject, (), ())
        ips = [ip for ip in names.get_values_for_type(x509.IPAddress)
               if isinstance(ip, IpAddress)]
        return cls(subject, tuple(ips), tuple(names.get_values_for_type(x509.DNSName)))

    def names(self, address: str, resolver: Resolver = resolve) -> bool:
        """Whether the certificate is for the peer at ``address``: its subjectAltName holds
        that IP address, or a DNS name that resolves to it (looked up only when no IP
        address entry matched; wildcards are not looked up). The common name is not
        consulted (RFC 6125 6.4.4)."""
        peer = _address(address)
        if peer is None:
            return False
        if peer in self.ips:
            return True
        return any(_address(found) == peer
                   for name in self.dns if not name.startswith("*")
                   for found in resolver(name.rstrip(".")))


def _address(text: str) -> IpAddress | None:
    """An IP address; an IPv4-mapped IPv6 address (``::ffff:10.0.0.5``) as its IPv4 address,
    the way a dual-stack listener sees an IPv4 peer; a zone index (``%eth0``) dropped."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
