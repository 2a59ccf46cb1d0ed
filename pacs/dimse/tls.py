"""DICOM TLS (PS3.15 Annex B): the handshake, in the thread that serves the connection.

pynetdicom wraps an accepted socket and completes the handshake in the accepting thread
(``AssociationServer.get_request`` with an ``ssl_context``): one slow client would stall every
other, and a worker process could not use a TLS session made in the listening process. So the
TLS listener accepts and hands off raw connections like the plain one (``handoff.py``), and the
thread that will serve the association, in whichever process, wraps the socket with the server
context and handshakes there (``transport.serving.CountedHandler``), within the read timeout.

A client is refused, its connection closed and the refusal audited (``guard.RefusalAudit``),
when the handshake fails (not TLS, below TLS 1.2, no BCP 195 suite, no certificate when one is
required, a certificate that does not chain to the CA or is not valid now: OpenSSL's checks),
or when its certificate does not name it: no IP address of its subjectAltName is the
connection's source address, and none of its DNS names resolves to it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from pacs.dimse.guard import RefusalAudit
from pacs.services.tls_listener import PeerCertificate, Resolver, resolve

log = logging.getLogger(__name__)

REFUSED = "tls-refused"
_PEER = "_pacs_tls_peer"

# OpenSSL's reasons (ssl.SSLError.reason) for the refusals a peer can cause, in the audit's words
_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS (plain DICOM on the TLS port?)",
    "HTTP_REQUEST": "not TLS (an HTTP request)",
    "PACKET_LENGTH_TOO_LONG": "not TLS (plain DICOM on the TLS port?)",
    "RECORD_LAYER_FAILURE": "not TLS (plain DICOM on the TLS port?)",
    "UNSUPPORTED_PROTOCOL": "TLS version below 1.2",
    "NO_SHARED_CIPHER": "no BCP 195 cipher suite offered",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
}


@dataclass(frozen=True)
class TlsPeer:
    """A connection after a successful handshake, and its client certificate's subject."""

    connection: ssl.SSLSocket
    subject: str | None  # None: no certificate (``--tls-client-cert optional`` or ``none``)

    def attach(self, assoc: Any) -> None:
        """Remember this peer with the association it serves (see :func:`peer_of`)."""
        setattr(assoc, _PEER, self)


def peer_of(assoc: Any) -> TlsPeer | None:
    """The TLS peer of an association; None over plain TCP."""
    peer = getattr(assoc, _PEER, None)
    return peer if isinstance(peer, TlsPeer) else None


def subject_of(assoc: Any) -> str | None:
    """The subject of the TLS client certificate the association's requestor presented, for
    the audit trail's actor (``dimse:AE@host tls:CN=...``); None over plain TCP."""
    peer = peer_of(assoc)
    return peer.subject if peer is not None else None


class TlsAcceptor:
    """Wraps accepted connections with ``context`` and handshakes, each within ``timeout``
    seconds; refusals are closed and noted in ``refusals``."""

    def __init__(self, context: ssl.SSLContext, *, timeout: float, refusals: RefusalAudit,
                 resolver: Resolver = resolve) -> None:
        self.context = context
        self.timeout = timeout
        self.refusals = refusals
        self.resolver = resolver

    def handshake(self, connection: socket.socket, address: Any) -> TlsPeer | None:
        """The connection as TLS, or None (closed, audited) when the client is refused.
        Never raises for anything the peer does; blocks this thread at most ``timeout``
        seconds for the handshake (plus a DNS lookup for a certificate's DNS names)."""
        host = str(address[0])
        try:
            # the handshake's flights are small writes: without this, Nagle holds them back
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(self.timeout)  # the whole handshake (CPython: one deadline)
            tls = self.context.wrap_socket(connection, server_side=True,
                                           do_handshake_on_connect=False)
        except OSError:  # closed by the peer already
            connection.close()
            return None
        subject = None
        try:
            tls.do_handshake()
            der = tls.getpeercert(binary_form=True)
            if der:
                certificate = PeerCertificate.of(der)
                subject = certificate.subject
                if not certificate.names(host, self.resolver):
                    reason = "client certificate is not for this address"
                    self._refuse(tls, host, reason, subject)
                    return None
            return TlsPeer(tls, subject)
        except TimeoutError:
            reason = f"no TLS handshake within {self.timeout:g} s"
        except ssl.SSLCertVerificationError as error:
            reason = f"client certificate refused: {error.verify_message}"
        except ssl.SSLError as error:
            reason = _REASONS.get(str(error.reason), f"TLS handshake failed ({error.reason})")
        except (OSError, ValueError):  # reset or closed during the handshake; a bad DER
            reason = "TLS handshake not completed"
        self._refuse(tls, host, reason)
        return None

    def _refuse(self, tls: ssl.SSLSocket, host: str, reason: str,
                subject: str | None = None) -> None:
        tls.close()
        if self.refusals.note(host=host, action=REFUSED, reason=reason, tls_subject=subject):
            log.warning("refusing a DICOM TLS connection from %s: %s%s", host, reason,
                        f" ({subject})" if subject else "")
