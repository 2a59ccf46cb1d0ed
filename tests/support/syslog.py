"""Syslog receivers a test runs on loopback (UDP, RFC 5426; TCP and TLS with octet counting,
RFC 6587 / RFC 5425), an RFC 5424 parser, and a check of a DICOM Audit Message against the
required elements of the PS3.15 A.5.1 schema.

    with UdpReceiver() as receiver:
        ...  # pacs serve --audit-syslog 127.0.0.1:{receiver.port}
        message = receiver.wait_for(lambda m: m.event_id == "110104")
        assert audit_message_problems(message.xml) == []
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.wait import until

BOM = b"\xef\xbb\xbf"

# RFC 5424 6: HEADER = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID,
# then SP STRUCTURED-DATA [SP MSG]
_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) (?P<sd>-|\[.*?\]) ?(?P<msg>.*)$",
    re.DOTALL,
)


@dataclass(frozen=True)
class SyslogMessage:
    """One RFC 5424 message as received."""

    raw: bytes
    priority: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes  # without the BOM
    bom: bool

    @classmethod
    def parse(cls, raw: bytes) -> SyslogMessage:
        match = _HEADER.match(raw)
        if match is None:
            raise AssertionError(f"not an RFC 5424 message: {raw[:200]!r}")
        msg = match["msg"]
        return cls(raw=raw, priority=int(match["pri"]), version=int(match["version"]),
                   timestamp=match["timestamp"].decode(), hostname=match["hostname"].decode(),
                   app_name=match["app"].decode(), procid=match["procid"].decode(),
                   msgid=match["msgid"].decode(), structured_data=match["sd"].decode(),
                   msg=msg.removeprefix(BOM), bom=msg.startswith(BOM))

    @property
    def facility(self) -> int:
        return self.priority // 8

    @property
    def severity(self) -> int:
        return self.priority % 8

    @property
    def xml(self) -> ET.Element:
        return ET.fromstring(self.msg)

    @property
    def event_id(self) -> str:
        found = self.xml.find("EventIdentification/EventID")
        return found.get("csd-code", "") if found is not None else ""

    @property
    def type_codes(self) -> list[str]:
        return [code.get("csd-code", "") for code in
                self.xml.findall("EventIdentification/EventTypeCode")]

    @property
    def event(self) -> dict[str, str]:
        found = self.xml.find("EventIdentification")
        return dict(found.attrib) if found is not None else {}

    def objects(self, id_type: str) -> list[ET.Element]:
        """ParticipantObjectIdentification elements whose ID type code is ``id_type``."""
        return [item for item in self.xml.findall("ParticipantObjectIdentification")
                if item.find(f"ParticipantObjectIDTypeCode[@csd-code='{id_type}']") is not None]

    def action(self) -> str:
        """The trail's action (the EventTypeCode of scheme 99PACS)."""
        for code in self.xml.findall("EventIdentification/EventTypeCode"):
            if code.get("codeSystemName") == "99PACS":
                return code.get("csd-code", "")
        return ""


class _Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port  # 0: any free port (the one bound is here once started)
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def _keep(self, raw: bytes) -> None:
        with self._lock:
            self.raw.append(raw)

    @property
    def messages(self) -> list[SyslogMessage]:
        with self._lock:
            raw = list(self.raw)
        return [SyslogMessage.parse(item) for item in raw]

    def wait_for(self, check: Callable[[SyslogMessage], bool], what: str = "a message",
                 timeout: float = 60.0) -> SyslogMessage:
        found: SyslogMessage = until(
            what, lambda: next((m for m in self.messages if check(m)), None), timeout)
        return found

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5)


class UdpReceiver(_Receiver):
    """RFC 5426: each datagram one message."""

    def start(self) -> UdpReceiver:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._socket.bind(("127.0.0.1", self.port))
        self.port = self._socket.getsockname()[1]
        self._spawn(self._serve)
        return self

    def _serve(self) -> None:
        self._socket.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                data, _ = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            self._keep(data)
        self._socket.close()


class StreamReceiver(_Receiver):
    """RFC 5425 / RFC 6587 octet counting (``MSG-LEN SP SYSLOG-MSG``), over TLS when given a
    server context; ``peer_certificates`` keeps the client certificate each connection showed."""

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.tls = tls
        self.connections = 0
        self.handshake_failures = 0
        self.peer_certificates: list[dict[str, Any] | None] = []

    def start(self) -> StreamReceiver:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)
        return self

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._read, connection)
        self._listener.close()

    def _read(self, connection: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        try:
            if self.tls is not None:
                connection.settimeout(10)
                try:
                    connection = self.tls.wrap_socket(connection, server_side=True)
                except (ssl.SSLError, OSError):
                    with self._lock:
                        self.handshake_failures += 1
                    return
                with self._lock:
                    self.peer_certificates.append(connection.getpeercert() or None)
            connection.settimeout(0.1)
            buffer = b""
            while not self._stopping.is_set():
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                buffer = self._frames(buffer)
        finally:
            connection.close()

    def _frames(self, buffer: bytes) -> bytes:
        while True:
            length, space, rest = buffer.partition(b" ")
            if not space:
                return buffer
            if not length.isdigit():
                raise AssertionError(f"not octet-counted framing: {buffer[:40]!r}")
            size = int(length)
            if len(rest) < size:
                return buffer
            self._keep(rest[:size])
            buffer = rest[size:]


def closed_port() -> int:
    """A loopback port nothing listens on (for now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the DICOM Audit Message schema's required elements (PS3.15 A.5.1) ---------------------------
_ACTIONS = {"C", "R", "U", "D", "E"}
_OUTCOMES = {"0", "4", "8", "12"}
_BOOLEANS = {"true", "false", "1", "0"}
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _coded(element: ET.Element | None, where: str) -> list[str]:
    """CodedValueType: csd-code, codeSystemName and originalText (A.5.1)."""
    if element is None:
        return [f"{where}: missing"]
    return [f"{where}: no {name}" for name in ("csd-code", "codeSystemName", "originalText")
            if not element.get(name)]


def audit_message_problems(root: ET.Element) -> list[str]:
    """What ``root`` lacks of the DICOM Audit Message schema (A.5.1): its element order and
    every required element and attribute, with the enumerated values; [] when none."""
    problems: list[str] = []
    if root.tag != "AuditMessage":
        return [f"root element is {root.tag}, not AuditMessage"]
    tags = [child.tag for child in root]
    # EventIdentification, ActiveParticipant+, AuditSourceIdentification,
    # ParticipantObjectIdentification*: in this order
    pattern = re.compile(r"^E(A)+S(P)*$")
    letters = "".join({"EventIdentification": "E", "ActiveParticipant": "A",
                       "AuditSourceIdentification": "S",
                       "ParticipantObjectIdentification": "P"}.get(tag, "?") for tag in tags)
    if not pattern.match(letters):
        problems.append(f"children out of the schema's order or unknown: {tags}")
    event = root.find("EventIdentification")
    if event is not None:
        if event.get("EventActionCode") not in _ACTIONS:
            problems.append(f"EventActionCode {event.get('EventActionCode')!r}")
        if not _DATETIME.match(event.get("EventDateTime", "")):
            problems.append(f"EventDateTime {event.get('EventDateTime')!r} (with a time zone)")
        if event.get("EventOutcomeIndicator") not in _OUTCOMES:
            problems.append(f"EventOutcomeIndicator {event.get('EventOutcomeIndicator')!r}")
        children = [child.tag for child in event]
        if not children or children[0] != "EventID":
            problems.append(f"EventIdentification must start with EventID: {children}")
        problems += _coded(event.find("EventID"), "EventID")
        for code in event.findall("EventTypeCode"):
            problems += _coded(code, "EventTypeCode")
        allowed = {"EventID", "EventTypeCode", "EventOutcomeDescription"}
        problems += [f"EventIdentification: unknown {tag}" for tag in children
                     if tag not in allowed]
    requestors = 0
    for participant in root.findall("ActiveParticipant"):
        if not participant.get("UserID"):
            problems.append("ActiveParticipant without UserID")
        flag = participant.get("UserIsRequestor")
        if flag not in _BOOLEANS:
            problems.append(f"ActiveParticipant {participant.get('UserID')}: UserIsRequestor "
                            f"{flag!r}")
        requestors += flag in ("true", "1")
        if participant.get("NetworkAccessPointTypeCode") not in (None, "1", "2", "3", "4",
                                                                 "5"):
            problems.append("NetworkAccessPointTypeCode not 1-5")
        for role in participant.findall("RoleIDCode"):
            problems += _coded(role, "RoleIDCode")
    if requestors > 1:
        problems.append(f"{requestors} participants are UserIsRequestor (at most one)")
    source = root.find("AuditSourceIdentification")
    if source is not None:
        if not source.get("AuditSourceID"):
            problems.append("AuditSourceIdentification without AuditSourceID")
        for code in source.findall("AuditSourceTypeCode"):
            if not code.get("csd-code"):
                problems.append("AuditSourceTypeCode without csd-code")
    for item in root.findall("ParticipantObjectIdentification"):
        problems += _object_problems(item)
    return problems


def _object_problems(item: ET.Element) -> list[str]:
    problems: list[str] = []
    where = f"ParticipantObject {item.get('ParticipantObjectID')!r}"
    if not item.get("ParticipantObjectID"):
        problems.append("ParticipantObjectIdentification without ParticipantObjectID")
    children = [child.tag for child in item]
    if not children or children[0] != "ParticipantObjectIDTypeCode":
        problems.append(f"{where}: must start with ParticipantObjectIDTypeCode: {children}")
    problems += _coded(item.find("ParticipantObjectIDTypeCode"), f"{where} IDTypeCode")
    if item.get("ParticipantObjectTypeCode") not in (None, "1", "2", "3", "4"):
        problems.append(f"{where}: ParticipantObjectTypeCode not 1-4")
    role = item.get("ParticipantObjectTypeCodeRole")
    if role is not None and not (role.isdigit() and 1 <= int(role) <= 26):
        problems.append(f"{where}: ParticipantObjectTypeCodeRole {role!r}")
    cycle = item.get("ParticipantObjectDataLifeCycle")
    if cycle is not None and not (cycle.isdigit() and 1 <= int(cycle) <= 15):
        problems.append(f"{where}: ParticipantObjectDataLifeCycle {cycle!r}")
    if children.count("ParticipantObjectName") + children.count("ParticipantObjectQuery") > 1:
        problems.append(f"{where}: both a name and a query")
    order = {"ParticipantObjectIDTypeCode": 0, "ParticipantObjectName": 1,
             "ParticipantObjectQuery": 1, "ParticipantObjectDetail": 2,
             "ParticipantObjectDescription": 3}
    ranks = [order.get(tag, -1) for tag in children]
    if -1 in ranks or ranks != sorted(ranks):
        problems.append(f"{where}: children out of order or unknown: {children}")
    for query in item.findall("ParticipantObjectQuery"):
        problems += _base64_problems(query.text or "", f"{where} query")
    for detail in item.findall("ParticipantObjectDetail"):
        if not detail.get("type"):
            problems.append(f"{where}: ParticipantObjectDetail without type")
        problems += _base64_problems(detail.get("value", ""), f"{where} detail value")
    for sop_class in item.findall("ParticipantObjectDescription/SOPClass"):
        if not (sop_class.get("NumberOfInstances") or "").isdigit():
            problems.append(f"{where}: SOPClass without NumberOfInstances")
    return problems


def _base64_problems(text: str, where: str) -> list[str]:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return [f"{where}: not base64"]
    return []


def one(parent: ET.Element, path: str) -> ET.Element:
    """The element at ``path`` under ``parent``; fails the test when there is none."""
    found = parent.find(path)
    if found is None:
        raise AssertionError(f"no {path} in {ET.tostring(parent)[:300]!r}")
    return found


def detail_values(item: ET.Element) -> dict[str, str]:
    """The ParticipantObjectDetail values of ``item``, decoded, by type."""
    return {detail.get("type", ""): base64.b64decode(detail.get("value", "")).decode()
            for detail in item.findall("ParticipantObjectDetail")}
