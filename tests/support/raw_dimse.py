"""A DIMSE requestor over a raw socket: every PDU written byte by byte as a test lays it out.

pynetdicom and DCMTK fragment a message one way each; the standard allows many more (PS3.8
9.3.5, Annex E: a PDU may carry several PDVs, a message may span any number of PDUs, a
command set may be fragmented too), and a hostile peer sends what it likes. This peer sends
exactly the PDVs it is given and reads back what the acceptor answers, PDU by PDU, so a test
can see the fragmentation of a response as well as its content.

Message control header of a PDV (PS3.8 E.2): bit 0 set for a command fragment, clear for a
data set fragment; bit 1 set for the last fragment of either.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name (PS3.7 A.2.1)
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.2.9"
VERIFICATION = "1.2.840.10008.1.1"

COMMAND_LAST = 0x03  # a command set, whole or its last fragment
COMMAND_MORE = 0x01  # a command fragment, more to come
DATA_LAST = 0x02
DATA_MORE = 0x00

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
NO_DATA_SET, DATA_SET_PRESENT = 0x0101, 0x0001  # (any value but 0x0101: a data set follows)

_HEADER = struct.Struct(">BxL")  # PDU type, reserved, PDU length
_ITEM = struct.Struct(">BxH")  # item type, reserved, item length (PS3.8 9.3.2)
_PDV = struct.Struct(">LBB")  # PDV item length, presentation context ID, control header


def _text(value: str, size: int = 0) -> bytes:
    data = value.encode("ascii")
    return data.ljust(size) if size else data


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def associate_rq(contexts: Iterable[tuple[int, str, Iterable[str]]], *, max_pdu: int,
                 called: str = "PACS", calling: str = "RAWPEER") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``contexts`` (context ID, abstract
    syntax, transfer syntaxes) and advertising ``max_pdu`` as Maximum Length Received
    (PS3.8 D.1; 0: no maximum)."""
    items = [_item(0x10, _text(APPLICATION_CONTEXT))]
    for context_id, abstract, transfers in contexts:
        subitems = _item(0x30, _text(abstract)) + b"".join(
            _item(0x40, _text(ts)) for ts in transfers)
        items.append(_item(0x20, bytes([context_id, 0, 0, 0]) + subitems))
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _text(IMPLEMENTATION_CLASS_UID))
    items.append(_item(0x50, user))
    body = (struct.pack(">H2x", 1) + _text(called, 16) + _text(calling, 16) + bytes(32)
            + b"".join(items))
    return _HEADER.pack(A_ASSOCIATE_RQ, len(body)) + body


def p_data_tf(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU holding ``pdvs`` in order: (context ID, control header, fragment)."""
    body = b"".join(_PDV.pack(len(fragment) + 2, context_id, control) + fragment
                    for context_id, control, fragment in pdvs)
    return _HEADER.pack(P_DATA_TF, len(body)) + body


def fragments(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into pieces of at most ``size`` bytes."""
    return [data[start:start + size] for start in range(0, len(data), size)]


def data_pdvs(context_id: int, data: bytes, size: int) -> list[tuple[int, int, bytes]]:
    """A data set as PDVs of at most ``size`` bytes, the last one marked last."""
    pieces = fragments(data, size)
    return [(context_id, DATA_LAST if n == len(pieces) - 1 else DATA_MORE, piece)
            for n, piece in enumerate(pieces)]


def command_set(command: Dataset) -> bytes:
    """``command`` encoded as a command set: Implicit VR Little Endian, with its Command Group
    Length first (PS3.7 6.3.1)."""
    body: bytes = encode(command, True, True)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def store_rq(sop_class_uid: str, sop_instance_uid: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), a data set following."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class_uid
    command.CommandField = C_STORE_RQ
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = DATA_SET_PRESENT
    command.AffectedSOPInstanceUID = sop_instance_uid
    return command_set(command)


def echo_rq(message_id: int) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    command = Dataset()
    command.AffectedSOPClassUID = VERIFICATION
    command.CommandField = C_ECHO_RQ
    command.MessageID = message_id
    command.CommandDataSetType = NO_DATA_SET
    return command_set(command)


@dataclass(frozen=True)
class Pdu:
    type: int
    body: bytes  # after the 6-byte header

    @property
    def size(self) -> int:
        """Bytes on the wire, header included."""
        return 6 + len(self.body)

    def pdvs(self) -> Iterator[tuple[int, int, bytes]]:
        """The PDVs of a P-DATA-TF PDU: (context ID, control header, fragment)."""
        offset = 0
        while offset < len(self.body):
            length, context_id, control = _PDV.unpack_from(self.body, offset)
            yield context_id, control, self.body[offset + 6:offset + 4 + length]
            offset += 4 + length


@dataclass
class Response:
    """A command set received, with the PDUs it came in."""

    command: Dataset
    context_id: int
    pdus: list[Pdu] = field(default_factory=list)


class RawAssociation:
    """An association this process requested, driven PDU by PDU."""

    def __init__(self, sock: socket.socket, answer: Pdu) -> None:
        self.sock = sock
        self.answer = answer  # the A-ASSOCIATE-AC (or -RJ)
        self.accepted: dict[int, str] = {}  # context ID → transfer syntax accepted
        self.acceptor_max_pdu = 0  # the acceptor's Maximum Length Received (0: none)
        if answer.type == A_ASSOCIATE_AC:
            self._read_accept(answer.body)

    @classmethod
    def open(cls, port: int, contexts: Iterable[tuple[int, str, Iterable[str]]], *,
             max_pdu: int = 16384, called: str = "PACS") -> RawAssociation:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq(contexts, max_pdu=max_pdu, called=called))
        answer = _read_pdu(sock)
        if answer is None:
            sock.close()
            raise ConnectionError("the acceptor closed the connection instead of answering")
        return cls(sock, answer)

    def _read_accept(self, body: bytes) -> None:
        offset = 68  # protocol version, reserved, AE titles, reserved (PS3.8 9.3.3)
        while offset < len(body):
            item_type, length = _ITEM.unpack_from(body, offset)
            value = body[offset + 4:offset + 4 + length]
            if item_type == 0x21 and value[2] == 0:  # presentation context, acceptance
                _, ts_length = _ITEM.unpack_from(value, 4)
                self.accepted[value[0]] = value[8:8 + ts_length].decode("ascii").rstrip("\0 ")
            elif item_type == 0x50:
                sub = 0
                while sub < len(value):
                    sub_type, sub_length = _ITEM.unpack_from(value, sub)
                    if sub_type == 0x51:
                        (self.acceptor_max_pdu,) = struct.unpack_from(">L", value, sub + 4)
                    sub += 4 + sub_length
            offset += 4 + length

    @property
    def max_fragment(self) -> int:
        """The largest fragment one PDV of a PDU to the acceptor may hold (PS3.8 D.1)."""
        return self.acceptor_max_pdu - 6 if self.acceptor_max_pdu else 1 << 20

    def send(self, *pdus: bytes) -> None:
        self.sock.sendall(b"".join(pdus))

    def read(self) -> Pdu | None:
        """The next PDU; None once the acceptor closed the connection."""
        return _read_pdu(self.sock)

    def response(self) -> Response:
        """The next command set (its fragments reassembled), and the PDUs it came in; a
        data set following it is not read."""
        pdus: list[Pdu] = []
        command = b""
        while True:
            pdu = self.read()
            if pdu is None or pdu.type != P_DATA_TF:
                kind = "the connection closed" if pdu is None else f"PDU type {pdu.type}"
                raise ConnectionError(f"{kind} instead of a response")
            pdus.append(pdu)
            for context_id, control, fragment in pdu.pdvs():
                if not control & 0x01:
                    raise ConnectionError("a data set fragment before the response's command")
                command += fragment
                if control & 0x02:
                    return Response(decode(BytesIO(command), True, True), context_id, pdus)

    def echo(self, context_id: int, message_id: int = 1) -> int:
        """C-ECHO on ``context_id`` (Verification): the response's status."""
        self.send(p_data_tf((context_id, COMMAND_LAST, echo_rq(message_id))))
        return int(self.response().command.Status)

    def release(self) -> bool:
        """A-RELEASE (PS3.8 7.2): True when the acceptor answered A-RELEASE-RP."""
        self.send(_HEADER.pack(A_RELEASE_RQ, 4) + bytes(4))
        answer = self.read()
        self.close()
        return answer is not None and answer.type == A_RELEASE_RP

    def aborted(self) -> bool:
        """Whether the acceptor's next PDU is an A-ABORT, and the connection closes after it."""
        pdu = self.read()
        return pdu is not None and pdu.type == A_ABORT and self.read() is None

    def read_until_closed(self) -> list[Pdu]:
        """Every PDU the acceptor sends until it closes the connection."""
        received = []
        while (pdu := self.read()) is not None:
            received.append(pdu)
        return received

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawAssociation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_pdu(sock: socket.socket) -> Pdu | None:
    header = _receive(sock, 6)
    if header is None:
        return None
    pdu_type, length = _HEADER.unpack(header)
    body = _receive(sock, length)
    if body is None:
        raise ConnectionError(f"the connection closed inside a PDU of type {pdu_type}")
    return Pdu(pdu_type, body)


def _receive(sock: socket.socket, size: int) -> bytes | None:
    """Exactly ``size`` bytes, or None if the connection closed (or was reset) before any."""
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if data:
                raise ConnectionError("the connection closed inside a PDU")
            return None
        data += chunk
    return bytes(data)
