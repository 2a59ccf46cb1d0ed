"""Syslog for audit messages: the RFC 5424 message, sent over UDP (RFC 5426), TLS (RFC 5425)
or plain TCP with the same octet-counting framing (RFC 6587 3.4.1).

The message, as PS3.15 A.6 / A.7 (and IHE ATNA, ITI-20) ask::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM<?xml ...?><AuditMessage>...

PRI is facility 10 (security/authorization) with severity 5 (notice) for a success and
4 (warning) for a failure: ``<85>`` and ``<84>``. TIMESTAMP is the event's time (RFC 3339, UTC,
microseconds), MSGID ``DICOM+RFC3881`` (the value A.6 and A.7 suggest; IHE ATNA names
``IHE+RFC-3881`` for the same schema), no STRUCTURED-DATA, and the MSG is the XML in UTF-8 after
a byte order mark (RFC 5424 6.4).

Sizes: a UDP datagram carries at most :data:`MAX_UDP_BYTES` (RFC 5426 asks receivers for 2048
and encourages more; A.7 warns that a cut datagram is broken XML, so a longer message is
shortened before it is framed, never cut); over TCP and TLS at most :data:`MAX_STREAM_BYTES`
(the size PS3.15 A.6 requires receivers to accept).

Over TLS the receiver's certificate is verified against the given CA file (else the system's
trust store) and its name or address, TLS 1.2 at least (A.6); this server's certificate is
presented as the client certificate when one is configured (ATNA's mutual authentication).
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

FACILITY_AUTHPRIV = 10  # security/authorization messages (RFC 5424 6.2.1)
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
MSGID = "DICOM+RFC3881"
APP_NAME = "pacs"
BOM = b"\xef\xbb\xbf"
MAX_UDP_BYTES = 8192
MAX_STREAM_BYTES = 32768
CONNECT_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 10.0

_TARGET = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]]+):(?P<port>\d+)"
                     r"(?:,(?P<transport>[A-Za-z]+))?$")


class Transport(StrEnum):
    UDP = "udp"  # RFC 5426
    TLS = "tls"  # RFC 5425
    TCP = "tcp"  # RFC 6587, octet counting (no encryption: for a receiver on this host)


@dataclass(frozen=True)
class SyslogTarget:
    """Where audit messages go: ``HOST:PORT`` (UDP), ``HOST:PORT,tls`` or ``HOST:PORT,tcp``."""

    host: str
    port: int
    transport: Transport = Transport.UDP

    @classmethod
    def parse(cls, text: str) -> SyslogTarget:
        match = _TARGET.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not HOST:PORT, HOST:PORT,tls or HOST:PORT,tcp")
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range 1-65535")
        name = (match["transport"] or "udp").lower()
        try:
            transport = Transport(name)
        except ValueError:
            raise ValueError(f"{text!r}: transport {name!r} is not udp, tls or tcp") from None
        return cls(match["host"].strip("[]"), port, transport)

    @property
    def max_bytes(self) -> int:
        """The longest syslog message (header and MSG) sent this way."""
        return MAX_UDP_BYTES if self.transport is Transport.UDP else MAX_STREAM_BYTES

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport is Transport.UDP else f",{self.transport}"
        return f"{host}:{self.port}{suffix}"


@dataclass(frozen=True)
class SyslogHeader:
    """The fields of the RFC 5424 HEADER this process puts on every message."""

    hostname: str
    app_name: str = APP_NAME
    procid: str = ""

    @classmethod
    def here(cls) -> SyslogHeader:
        return cls(hostname=_header_field(socket.gethostname(), 255),
                   procid=str(os.getpid()))


HEADER_OVERHEAD = 200
"""Bytes of a message that are not XML, at most: PRI, version, a 32-byte timestamp, a host name
bounded here to 100 characters, APP-NAME, PROCID, MSGID, the separators and the BOM."""


def frame_message(xml: bytes, *, at: datetime, failure: bool, header: SyslogHeader) -> bytes:
    """One RFC 5424 SYSLOG-MSG carrying the audit message ``xml`` of an event at ``at``
    (severity warning when the event is a failure)."""
    severity = SEVERITY_WARNING if failure else SEVERITY_NOTICE
    priority = FACILITY_AUTHPRIV * 8 + severity
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    timestamp = at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    head = (f"<{priority}>1 {timestamp} {_header_field(header.hostname, 100)} "
            f"{_header_field(header.app_name, 48)} {_header_field(header.procid, 128)} "
            f"{MSGID} - ")
    return head.encode("ascii") + BOM + xml


def _header_field(value: str, longest: int) -> str:
    """A HEADER field: printable US-ASCII without spaces (RFC 5424 6), or ``-`` (NILVALUE)."""
    text = "".join(ch for ch in value if "!" <= ch <= "~")[:longest]
    return text or "-"


class SyslogSender(Protocol):
    """Sends framed syslog messages; raises ``OSError`` when they cannot be sent."""

    def send(self, messages: list[bytes]) -> None: ...

    def close(self) -> None: ...


class UdpSender:
    """RFC 5426: one message per datagram. Delivery is not confirmed (a receiver that is down
    loses what is sent meanwhile); only a failure to resolve or send is seen."""

    def __init__(self, target: SyslogTarget) -> None:
        self.target = target
        self._socket: socket.socket | None = None
        self._address: tuple[str, int] | None = None

    def send(self, messages: list[bytes]) -> None:
        if self._socket is None:
            info = socket.getaddrinfo(self.target.host, self.target.port,
                                      type=socket.SOCK_DGRAM)[0]
            self._socket = socket.socket(info[0], socket.SOCK_DGRAM)
            self._socket.settimeout(SEND_TIMEOUT_S)
            self._address = (str(info[4][0]), int(info[4][1]))
        assert self._address is not None
        try:
            for message in messages:
                self._socket.sendto(message, self._address)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class StreamSender:
    """RFC 5425 (TLS) or RFC 6587 (TCP): ``MSG-LEN SP SYSLOG-MSG`` on one kept connection,
    opened again when the receiver closed it."""

    def __init__(self, target: SyslogTarget, *, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tls = tls
        self._socket: socket.socket | None = None

    def send(self, messages: list[bytes]) -> None:
        if self._socket is not None and _closed_by_peer(self._socket):
            self.close()
        if self._socket is None:
            self._socket = self._connect()
        try:
            self._socket.sendall(b"".join(b"%d %s" % (len(message), message)
                                          for message in messages))
        except OSError:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.target.host, self.target.port),
                                       timeout=CONNECT_TIMEOUT_S)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is None:
                raw.settimeout(SEND_TIMEOUT_S)
                return raw
            wrapped = self.tls.wrap_socket(raw, server_hostname=self.target.host)
            wrapped.settimeout(SEND_TIMEOUT_S)
            return wrapped
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass  # closing a connection that broke: nothing left to do
            self._socket = None


def _closed_by_peer(connection: socket.socket) -> bool:
    """A syslog receiver never writes: a readable connection was closed (or reset) by it. A
    write to it would seem to succeed and its messages would be lost, so it is opened again.
    TLS 1.3 session tickets make a connection readable too: read without waiting, they are
    consumed and no application data follows."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        connection.setblocking(False)
        try:
            return connection.recv(1) == b""
        finally:
            connection.settimeout(SEND_TIMEOUT_S)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ValueError):
        return True


def tls_context(*, ca_file: Path | None, cert_file: Path | None = None,
                key_file: Path | None = None) -> ssl.SSLContext:
    """A client context for RFC 5425: the receiver's chain verified against ``ca_file`` (the
    system's trust store when None) and its name checked; TLS 1.2 at least; this server's
    certificate presented when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def sender_for(target: SyslogTarget, *, ca_file: Path | None = None,
               cert_file: Path | None = None, key_file: Path | None = None) -> SyslogSender:
    if target.transport is Transport.UDP:
        return UdpSender(target)
    if target.transport is Transport.TCP:
        return StreamSender(target)
    return StreamSender(target, tls=tls_context(ca_file=ca_file, cert_file=cert_file,
                                                key_file=key_file))
