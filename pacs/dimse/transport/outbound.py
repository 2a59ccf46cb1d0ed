"""C-STORE requests sent from files, written to the socket directly (the fast transport, 15.).

pynetdicom sends a C-STORE from a file by reading its File Meta Information with pydicom,
encoding the command set with pydicom, queueing a P-DATA primitive per fragment for the DUL
thread to encode and send, and returns the response after its DUL, state machine and DIMSE
provider turned it back into a primitive and a pydicom Dataset: about 2 ms of Python per
instance here, the bulk of a C-MOVE's time. :class:`Outbound` does the same protocol work in
the sending thread:

* the File Meta Information is read with ``struct`` (``file_meta``): SOP Class and Instance
  UIDs and the transfer syntax, and where the data set starts;
* the command set is encoded by ``encoding.py``; the data set streams from the file in
  fragments within the peer's Maximum Length (PS3.8 D.1), as P-DATA-TF PDUs written with
  ``sendall`` (never the whole file in memory);
* the DUL thread, reading PDUs (``fast._read_pdu``), hands a whole single-fragment
  C-STORE-RSP command set to :meth:`Outbound.offer` (read by ``decoding.store_response``);
  anything else takes pynetdicom's path, and a response that went that way is taken from
  pynetdicom's message queue instead.

While an association has an :class:`Outbound`, every DIMSE message pacs sends on it is written
by the thread holding it (``fast.send_when_drained`` too: a C-GET's pending responses), so
nothing interleaves with a request half written. A file whose File Meta Information is not the
plain kind (``file_meta`` returns None) is sent by pynetdicom's code instead.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pacs.dimse.transport import decoding, encoding

log = logging.getLogger(__name__)

_META_HEAD = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (PS3.5 7.1.2)
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"
# a response: its Status and Error Comment by keyword (``.get("Status")``), or pynetdicom's
# status Dataset when it came pynetdicom's way
Answer = Mapping[str, Any] | Dataset
_CHUNK_FRAGMENTS = 16  # fragments read from the file at a time (bounded memory)
_POLL_S = 0.05  # how often a wait for a response looks at the association's state


@dataclass(frozen=True)
class FileMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_set_offset: int


def file_meta(path: Path) -> FileMeta | None:
    """The File Meta Information of a DICOM file (PS3.10 7.1), read with ``struct``; None
    when it is not the plain kind: a preamble, ``DICM``, a group length first."""
    with open(path, "rb") as handle:
        head = handle.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != _GROUP_LENGTH:
            return None
        (length,) = struct.unpack_from("<I", head, 140)
        if length > 64 * 1024:
            return None
        group = handle.read(length)
    if len(group) != length:
        return None
    values: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= length:
        number, element, vr, size = _META_HEAD.unpack_from(group, offset)
        offset += 8
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            if offset + 4 > length:
                return None
            (size,) = struct.unpack_from("<I", group, offset)
            offset += 4
        if number != 0x0002 or offset + size > length:
            return None
        values[element] = group[offset:offset + size]
        offset += size
    try:
        return FileMeta(
            sop_class_uid=decoding.text(values[0x0002]),
            sop_instance_uid=decoding.text(values[0x0003]),
            transfer_syntax_uid=decoding.text(values[0x0010]),
            data_set_offset=144 + length,
        )
    except KeyError:
        return None


class Outbound:
    """The C-STORE requests of one association, written by the thread that holds it."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.dul = assoc.dul
        self.socket = assoc.dul.socket.socket
        self.max_pdu = int(assoc.dimse.maximum_pdu_size or 0)  # the peer's (0: no limit)
        self.contexts = {
            (str(cx.abstract_syntax), str(ts)): int(cx.context_id)
            for cx in assoc.accepted_contexts if cx.as_scu for ts in cx.transfer_syntax
        }
        self.responses: queue.SimpleQueue[tuple[int, int, str]] = queue.SimpleQueue()
        self.waiting = False
        self.lock = threading.Lock()  # one writer at a time

    # -- the DUL thread ----------------------------------------------------------------------
    def offer(self, pdu: bytearray) -> bool:
        """Take ``pdu`` when it is a whole C-STORE-RSP that a send waits for."""
        if not self.waiting or len(pdu) < 12 or pdu[11] & 0x03 != 0x03:
            return False
        (item,) = struct.unpack_from(">L", pdu, 6)
        if 6 + 4 + item != len(pdu):  # more than one PDV
            return False
        answer = decoding.store_response(bytes(pdu[12:]))
        if answer is None:
            return False
        self.responses.put(answer)
        return True

    # -- the sending thread ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        with self.lock:
            self.socket.sendall(data)

    def send_file(self, path: Path, *, msg_id: int, originator_aet: str | None,
                  originator_id: int | None) -> Answer | None:
        """C-STORE ``path``; the response's Status and ErrorComment (empty: no response, the
        peer aborted), or None when the file is not one this path sends (pynetdicom's then)."""
        meta = file_meta(path)
        if meta is None:
            return None
        context_id = self.contexts.get((meta.sop_class_uid, meta.transfer_syntax_uid))
        if context_id is None:
            return None  # pynetdicom's refusal (ValueError), told as retrieve.py expects
        command = encoding.store_request(
            sop_class_uid=meta.sop_class_uid, sop_instance_uid=meta.sop_instance_uid,
            message_id=msg_id, originator_aet=originator_aet, originator_id=originator_id)
        self.waiting = True
        try:
            self._send(context_id, command, path, meta.data_set_offset)
        except OSError as error:
            log.warning("C-STORE of %s: the connection failed: %s", meta.sop_instance_uid,
                        error)
            self.waiting = False
            return Dataset()
        return self._response(msg_id)

    def _send(self, context_id: int, command: bytes, path: Path, offset: int) -> None:
        fragment = self.max_pdu - 6 if self.max_pdu else 1 << 20
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size - offset
            handle.seek(offset)
            pieces = [encoding.pdus(context_id, command, None, self.max_pdu)]
            sent = 0
            while sent < size or not sent:
                chunk = handle.read(min(fragment * _CHUNK_FRAGMENTS, size - sent))
                if not chunk and size:
                    raise OSError("the file ended early")
                for start in range(0, max(len(chunk), 1), fragment):
                    part = chunk[start:start + fragment]
                    last = sent + start + len(part) >= size
                    pieces.append(_pdu(context_id, 0x02 if last else 0x00, part))
                sent += len(chunk)
                self.write(b"".join(pieces))
                pieces = []
                if not size:
                    break

    def _response(self, msg_id: int) -> Answer:
        timeout = self.assoc.dimse_timeout
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while True:
                try:
                    responded_to, status, comment = self.responses.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self.assoc.dimse.msg_queue.empty():  # came pynetdicom's way
                        _, response = self.assoc.dimse.get_msg(block=False)
                        if response is not None:
                            return self.assoc._check_received_status(response)  # type: ignore[no-any-return]
                    # (the reactor that would update is_established is paused: ask the DUL)
                    if (not self.assoc.is_established
                            or self.dul.state_machine.current_state != "Sta6"):
                        return {}
                    if deadline is not None and time.monotonic() > deadline:
                        self.assoc._handle_no_response()
                        return Dataset()
                    continue
                if responded_to != msg_id:
                    log.warning("a C-STORE response to message %d, not %d: ignored",
                                responded_to, msg_id)
                    continue
                return {"Status": status, "ErrorComment": comment} if comment else {
                    "Status": status}
        finally:
            self.waiting = False


def _pdu(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF PDU holding one data set fragment (PS3.8 9.3.5)."""
    return struct.pack(">BxLLBB", 0x04, len(fragment) + 6, len(fragment) + 2, context_id,
                       control) + fragment
