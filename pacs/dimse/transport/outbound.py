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
* the data set's fragments go out with ``sendmsg``: the PDU headers and slices of one
  buffer the file is read into, never copied into PDUs in Python (TLS: joined, ``sendall``);
* the sending thread reads the response itself (``_read_response``): it peeks at the next
  PDU and takes it when it is a whole single-fragment C-STORE-RSP command set (read by
  ``decoding.store_response``), which saves a wake-up of the DUL thread and a hand-over
  between threads per instance. Meanwhile the DUL thread reads nothing (``dul_read``) and
  its clock does not watch the socket. Anything else (an abort, a release, a C-CANCEL, a
  response in pieces) is handed over: from then on the DUL thread reads every PDU, hands a
  C-STORE-RSP to :meth:`Outbound.offer`, and anything else takes pynetdicom's path, a
  response that went that way being taken from pynetdicom's message queue. Over TLS the DUL
  thread reads throughout (an ``SSLSocket`` cannot peek);
* work that does not need the response (a C-MOVE's pending response for the previous
  sub-operation) runs while the peer stores the request (``meanwhile``).

While an association has an :class:`Outbound`, every DIMSE message pacs sends on it is written
by the thread holding it (``fast.send_when_drained`` too: a C-GET's pending responses), so
nothing interleaves with a request half written. A file whose File Meta Information is not the
plain kind (``file_meta`` returns None) is sent by pynetdicom's code instead.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
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
_CHUNK_BYTES = 1 << 20  # read from the file at a time, in whole fragments (bounded memory)
_POLL_S = 0.05  # how often a wait for a response looks at the association's state
_PEEK = 4096  # a C-STORE-RSP PDU longer than this is left to the DUL thread


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
        return read_file_meta(handle)


def read_file_meta(handle: Any) -> FileMeta | None:
    """:func:`file_meta` of the file open as ``handle``, read from its start."""
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
        # The sending thread reads the responses itself (``_read_response``) while
        # ``reads_itself``; the DUL thread then reads only what it is handed (``dul_read``).
        # Not over TLS: an SSLSocket cannot peek at a PDU before taking it.
        self.reads_itself = not isinstance(self.socket, ssl.SSLSocket)
        self.read_lock = threading.Lock()  # held by whichever thread reads a PDU
        self.gather = not isinstance(self.socket, ssl.SSLSocket)  # sendmsg (no SSLSocket's)
        self._chunk: memoryview | None = None  # (``_buffer``)

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

    def dul_read(self, read: Any) -> None:
        """The DUL thread's turn to read a PDU (``read()``) while this thread may be reading
        responses: only once the socket still has data when the read lock is free."""
        if not self.reads_itself:
            read()
            return
        with self.read_lock:
            try:
                ready, _, _ = select.select([self.socket], [], [], 0)
            except (OSError, ValueError):  # closed meanwhile: the read tells the DUL
                ready = [self.socket]
            if ready:
                read()

    def hand_over(self) -> None:
        """From now on the DUL thread reads every PDU (something other than a C-STORE-RSP
        came): woken, as it may sleep without watching the socket."""
        self.reads_itself = False
        waker = getattr(self.dul, "_pacs_waker", None)
        if waker is not None:
            waker.wake()

    # -- the sending thread ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        with self.lock:
            self.socket.sendall(data)

    def send_file(self, path: Path, *, msg_id: int, originator_aet: str | None,
                  originator_id: int | None,
                  meanwhile: Callable[[], None] | None = None) -> Answer | None:
        """C-STORE ``path``; the response's Status and ErrorComment (empty: no response, the
        peer aborted), or None when the file is not one this path sends (pynetdicom's then).
        ``meanwhile`` runs once the request is written, while the peer stores it."""
        with open(path, "rb", buffering=0) as handle:
            meta = read_file_meta(handle)
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
                self._send(context_id, command, handle, meta.data_set_offset)
            except OSError as error:
                log.warning("C-STORE of %s: the connection failed: %s", meta.sop_instance_uid,
                            error)
                self.waiting = False
                return Dataset()
        if meanwhile is not None:
            meanwhile()
        return self._response(msg_id)

    def _send(self, context_id: int, command: bytes, handle: Any, offset: int) -> None:
        """The request: ``command``, then the data set from ``handle`` at ``offset`` on."""
        fragment = self.max_pdu - 6 if self.max_pdu else 1 << 20
        size = os.fstat(handle.fileno()).st_size - offset
        handle.seek(offset)
        view = self._buffer(fragment)
        pieces: list[bytes | memoryview] = [
            encoding.pdus(context_id, command, None, self.max_pdu)]
        sent = 0
        while sent < size or not sent:
            count = handle.readinto(view[:min(len(view), size - sent)]) if size else 0
            if not count and size:
                raise OSError("the file ended early")
            for start in range(0, max(count, 1), fragment):
                part = view[start:min(start + fragment, count)]
                last = sent + start + len(part) >= size
                pieces.append(_header(context_id, 0x02 if last else 0x00, len(part)))
                pieces.append(part)
            sent += count
            self.write_pieces(pieces)
            pieces = []
            if not size:
                break

    def _buffer(self, fragment: int) -> memoryview:
        """This association's read buffer: whole fragments, about ``_CHUNK_BYTES`` (one
        fragment when they are larger), made once."""
        size = max(_CHUNK_BYTES // fragment, 1) * fragment
        if self._chunk is None or len(self._chunk) != size:
            self._chunk = memoryview(bytearray(size))
        return self._chunk

    def write_pieces(self, pieces: list[bytes | memoryview]) -> None:
        """Write ``pieces`` in order, without joining them (``sendmsg``; TLS: joined)."""
        with self.lock:
            if not self.gather:
                self.socket.sendall(b"".join(pieces))
                return
            while pieces:
                count = self.socket.sendmsg(pieces[:_IOV_MAX])
                while count:  # drop what went, keep the rest of a piece half sent
                    if count >= len(pieces[0]):
                        count -= len(pieces[0])
                        pieces.pop(0)
                    else:
                        pieces[0] = memoryview(pieces[0])[count:]
                        count = 0

    def _response(self, msg_id: int) -> Answer:
        timeout = self.assoc.dimse_timeout
        deadline = time.monotonic() + timeout if timeout else None
        try:
            if self.reads_itself:
                answer = self._read_response(msg_id, deadline)
                if answer is not None:
                    return answer
            while True:
                try:
                    responded_to, status, comment = self.responses.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self.assoc.dimse.msg_queue.empty():  # came pynetdicom's way
                        _, response = self.assoc.dimse.get_msg(block=False)
                        if response is not None:
                            return self.assoc._check_received_status(response)  # type: ignore[no-any-return]
                    ended = self._ended(deadline)
                    if ended is not None:
                        return ended
                    continue
                if responded_to != msg_id:
                    log.warning("a C-STORE response to message %d, not %d: ignored",
                                responded_to, msg_id)
                    continue
                return _answer(status, comment)
        finally:
            self.waiting = False


    def _read_response(self, msg_id: int, deadline: float | None) -> Answer | None:
        """The C-STORE-RSP to ``msg_id``, read from the socket by this thread: the PDU is
        looked at in place (``MSG_PEEK``) and taken only when it is a whole, single-fragment
        C-STORE-RSP command set; anything else (an abort, a release, a C-CANCEL, a response
        in pieces) is handed over to the DUL thread and None returned (the queue's then).
        Saves the DUL thread's wake-up and the hand-over between threads per instance."""
        raw = self.socket
        while True:
            with self.read_lock:
                try:  # the DUL thread read it first
                    responded_to, status, comment = self.responses.get_nowait()
                except queue.Empty:
                    pass
                else:
                    if responded_to == msg_id:
                        return _answer(status, comment)
                    log.warning("a C-STORE response to message %d, not %d: ignored",
                                responded_to, msg_id)
                    continue
                try:
                    ready, _, _ = select.select([raw], [], [], _POLL_S)
                    head = raw.recv(_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT) if ready else None
                except BlockingIOError:
                    head = None
                except (OSError, ValueError):  # closed under us: the DUL tells the rest
                    head = b""
                if head is not None:
                    answer = self._take(head, msg_id)
                    if answer is None:
                        self.hand_over()
                        return None
                    if answer is not _INCOMPLETE:
                        return answer
                    self._await_rest(head)
                    continue
            ended = self._ended(deadline)
            if ended is not None:
                return ended

    def _ended(self, deadline: float | None) -> Answer | None:
        """How a wait for a response ends when the association is gone (no answer: ``{}``)
        or the DIMSE timeout passed (an empty Dataset, the association aborted); None while
        neither. (The reactor that would update ``is_established`` is paused: ask the DUL.)"""
        if not self.assoc.is_established or self.dul.state_machine.current_state != "Sta6":
            return {}
        if deadline is not None and time.monotonic() > deadline:
            self.assoc._handle_no_response()
            return Dataset()
        return None

    def _await_rest(self, head: bytes) -> None:
        """Wait (within the socket's read timeout) until the PDU that ``head`` begins has
        arrived whole: the peer may write its header and its body apart."""
        need = 6
        if len(head) >= 6:
            (length,) = struct.unpack_from(">L", head, 2)
            need = 6 + length
        try:
            self.socket.recv(need, socket.MSG_PEEK | socket.MSG_WAITALL)
        except OSError:
            pass  # timed out or closed: the next look tells

    def _take(self, head: bytes, msg_id: int) -> Answer | None:
        """Take the PDU that ``head`` begins with off the socket when it is the C-STORE-RSP
        to ``msg_id`` (its answer), else None; ``_INCOMPLETE`` when it has not all arrived."""
        if len(head) < 6:
            return _INCOMPLETE if head else None
        if head[0] != 0x04:
            return None
        (length,) = struct.unpack_from(">L", head, 2)
        if 6 + length > _PEEK:
            return None
        if len(head) < 6 + length:
            return _INCOMPLETE
        pdu = head[:6 + length]
        if length < 6 or pdu[11] & 0x03 != 0x03:
            return None
        (item,) = struct.unpack_from(">L", pdu, 6)
        if 6 + 4 + item != len(pdu):  # more than one PDV
            return None
        decoded = decoding.store_response(bytes(pdu[12:]))
        if decoded is None or decoded[0] != msg_id:
            return None
        taken = self.socket.recv(len(pdu), socket.MSG_WAITALL)
        if len(taken) != len(pdu):  # cannot happen: the bytes were there
            raise OSError("a C-STORE response was cut short")
        self.dul._idle_timer.restart()
        return _answer(decoded[1], decoded[2])


_INCOMPLETE: Answer = {"Status": None}


def _answer(status: int, comment: str) -> Answer:
    return {"Status": status, "ErrorComment": comment} if comment else {"Status": status}


_IOV_MAX = 512  # pieces per sendmsg (Linux allows 1,024)
_HEADER = struct.Struct(">BxLLBB")


def _header(context_id: int, control: int, length: int) -> bytes:
    """The head of a P-DATA-TF PDU holding one data set fragment of ``length`` bytes (PS3.8
    9.3.5): PDU type and length, PDV item length, context ID, message control header."""
    return _HEADER.pack(0x04, length + 6, length + 2, context_id, control)
