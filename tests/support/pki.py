"""A test PKI made on the spot with ``cryptography``: CAs, server and client certificates, keys.

No binary fixtures: each test makes the certificates it needs, with the names, validity, key type
and extensions as parameters, and writes them as PEM files for the server, DCMTK and ``pacs``.

    root = make_ca("pacs test root")
    sub = make_ca("pacs test intermediate", issuer=root)
    server = issue(sub, "localhost", dns=("localhost",), ips=("127.0.0.1",))
    cert, key = server.write(tmp_path, "server", chain=(sub,))
    ca = root.write_cert(tmp_path / "ca.pem")
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec256", "ec384", "rsa2048", "rsa3072", "rsa1024", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
Usage = Literal["server", "client", "both"]

_EKU = {"server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]}


def make_key(key_type: KeyType = "ec256") -> PrivateKey:
    """A fresh private key; EC P-256 by default (fast to make, accepted by every TLS stack)."""
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def write_cert(self, path: Path, chain: Sequence[Issued] = ()) -> Path:
        """This certificate, then ``chain`` (its issuers, leaf first), as PEM."""
        path.write_bytes(b"".join(item.cert.public_bytes(serialization.Encoding.PEM)
                                  for item in (self, *chain)))
        return path

    def write_key(self, path: Path) -> Path:
        """The private key, unencrypted PKCS#8 PEM (what OpenSSL, DCMTK and uvicorn read)."""
        path.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    def write(self, folder: Path, stem: str, chain: Sequence[Issued] = ()) -> tuple[Path, Path]:
        """``folder/stem.pem`` (certificate and chain) and ``folder/stem.key``."""
        return (self.write_cert(folder / f"{stem}.pem", chain),
                self.write_key(folder / f"{stem}.key"))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _builder(subject: str, issuer_name: x509.Name, public: CertificatePublicKeyTypes,
             not_before: datetime | None, days: float) -> x509.CertificateBuilder:
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)  # clock skew between tools
    return (x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days)))


def make_ca(common_name: str = "pacs test CA", *, issuer: Issued | None = None,
            key_type: KeyType = "ec256", not_before: datetime | None = None,
            days: float = 3650, path_length: int | None = None,
            is_ca: bool = True) -> Issued:
    """A root CA (self-signed) or, with ``issuer``, an intermediate CA it signs.

    ``is_ca=False`` makes a certificate that signs others without the right to (a negative test).
    """
    key = make_key(key_type)
    signer = issuer.key if issuer else key
    builder = (_builder(common_name, issuer.cert.subject if issuer else _name(common_name),
                        key.public_key(), not_before, days)
               .add_extension(x509.BasicConstraints(ca=is_ca,
                                                    path_length=path_length if is_ca else None),
                              critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=is_ca,
                   crl_sign=is_ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    return Issued(builder.sign(signer, _signature_hash(signer)), key)


def issue(ca: Issued, common_name: str, *, dns: Sequence[str] = (), ips: Sequence[str] = (),
          usage: Usage = "server", key_type: KeyType = "ec256", key: PrivateKey | None = None,
          not_before: datetime | None = None, days: float = 365) -> Issued:
    """An end-entity certificate ``ca`` signs: server, client or both, with these SANs.

    For an expired certificate give ``not_before`` in the past and a short ``days``.
    """
    key = key or make_key(key_type)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (_builder(common_name, ca.cert.subject, key.public_key(), not_before, days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False,
                   key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
                   key_agreement=False, key_cert_sign=False, crl_sign=False,
                   encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(_EKU[usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, _signature_hash(ca.key)), key)


def server_cert(ca: Issued, *, host: str = "localhost", ips: Sequence[str] = ("127.0.0.1",),
                key_type: KeyType = "ec256", not_before: datetime | None = None,
                days: float = 365) -> Issued:
    """A server certificate for ``localhost`` and 127.0.0.1 (what the loopback tests dial)."""
    return issue(ca, host, dns=(host,), ips=ips, usage="server", key_type=key_type,
                 not_before=not_before, days=days)


def client_cert(ca: Issued, common_name: str = "pacs test client", *,
                ips: Sequence[str] = (), dns: Sequence[str] = (),
                key_type: KeyType = "ec256", not_before: datetime | None = None,
                days: float = 365) -> Issued:
    """A client certificate (extendedKeyUsage clientAuth), e.g. a modality's for DICOM TLS,
    naming the client by ``ips`` and ``dns`` (its subjectAltName, which DICOM TLS checks
    against the connection's source address)."""
    return issue(ca, common_name, dns=dns, ips=ips, usage="client", key_type=key_type,
                 not_before=not_before, days=days)



@dataclass(frozen=True)
class ServerPki:
    """PEM files of a CA and a server certificate it signs, for a TLS listener's tests."""

    ca: Path  # what clients trust
    cert: Path  # the server certificate, for localhost and 127.0.0.1
    key: Path  # its unencrypted private key


def make_server_pki(folder: Path) -> ServerPki:
    """A CA and a server certificate for ``localhost`` and 127.0.0.1, written in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    cert, key = server_cert(ca).write(folder, "server")
    return ServerPki(ca=ca.write_cert(folder / "ca.pem"), cert=cert, key=key)
