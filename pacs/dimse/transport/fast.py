"""The fast DIMSE transport (``PACS_DIMSE_TRANSPORT=fast``): where pacs reaches into pynetdicom.

Installed by :class:`FastTransport` (``transport.install("fast")``), never at import time. Each
item names the pynetdicom 3.0 internals it relies on; ``UPSTREAM`` pins the source of every
upstream function replaced, copied or wrapped, and ``tests/dimse/test_transport.py`` fails when
any of them changes or an attribute used here disappears.

1. ``AssociationSocket.socket``: TCP_NODELAY on the sockets of the associations pacs requests.
2. ``DULServiceProvider._run_loop_delay``: the reactor's sleep between polls (default 1 ms) is
   the latency floor of every PDU on one association; 0.1 ms gives 1.15-1.65x the rate.
3. ``DIMSEMessage._data_set_file``: with chunked receive, pynetdicom leaves the partial
   temporary file behind when an association aborts mid-dataset; we remove it on close.
5. ``pynetdicom.association.uid_to_service_class``: the one place an association picks the
   service class of a request; C-FIND, C-MOVE and C-GET get pacs's (``qr.py``), which write
   their responses with the lean encoder and send instances from files.
6. ``Association._reactor_checkpoint``, ``_is_paused``, ``_get_valid_context``,
   ``_check_received_status``, ``_handle_no_response``: C-MOVE sub-operations are sent with
   the requestor's reactor held paused for the whole batch (:func:`reactor_paused`,
   :func:`send_file`); pynetdicom's per-request pause costs a reactor turn each, and its
   reactor could take the response to a C-STORE that follows another one at once.
7. ``DULServiceProvider.to_provider_queue``: responses written by ``encoding.py`` go straight
   to the DUL's queue; :func:`send_when_drained` keeps it short, so a C-CANCEL still finds
   matches left to cancel and a large answer is not queued whole in memory.
8. ``Association._run_reactor``: an acceptor's reactor polls for DIMSE messages with a fixed
   1 ms sleep, so each request waits 0.5 ms on average before it is served; ours waits on the
   message queue instead (:func:`_acceptor_reactor`, the same loop otherwise).
9. ``pynetdicom.dimse_messages.NamedTemporaryFile``, ``create_file_meta`` and
   ``write_file_meta_info``: the chunked receive's file and its File Meta Information, made
   ahead of time / written from bytes by ``receive_files.py``.
10. ``pynetdicom.dul.time`` and ``DULServiceProvider.send_pdu``: the DUL reactor of an
   acceptor polls its socket every 0.1 ms (``_run_loop_delay``), which costs a fifth of a core
   per idle association and starves concurrent ones; ours sleeps in ``select`` on the socket
   and a wake-up pipe written by ``send_pdu`` (:class:`_DulClock`), so it wakes for data either
   way and idles for free. Under TLS it first asks ``SSLSocket.pending()``: bytes OpenSSL has
   already decrypted are invisible to ``select``.
11. ``DIMSEMessage.decode_msg``: a received C-STORE-RQ's command set is read by
   ``decoding.py`` instead of pydicom (:func:`enable_lean_store_requests`); the loop is
   pynetdicom 3.0's otherwise. Only while pynetdicom's standard log handlers are off: they
   look a message's class up exactly.
12. ``DULServiceProvider._read_pdu_data``: the one place pynetdicom reads a PDU, header then
   the whole body, blocking for as long as the peer likes. An acceptor's is ours
   (:func:`bound_pdus`): a PDU longer than ``guard.PduLimits`` allows for its type is refused
   (A-ABORT, connection closed) before its body is read, and a PDU must arrive whole within
   the read timeout; the body is read into one buffer, not 4 KiB at a time. Over TLS the
   bound is the ``SSLSocket``'s own timeout: a blocking ``SSLSocket`` retries a read that the
   kernel's SO_RCVTIMEO ended, for ever.
15. ``Association.dimse_timeout``, ``dimse.msg_queue``, ``_check_received_status``,
   ``_handle_no_response``: C-STORE requests from files are written by the sending thread and
   their responses read by that thread too (peeked at, taken when they are plain
   C-STORE-RSPs; ``DULServiceProvider._idle_timer`` restarted) or else from the DUL thread
   (``outbound.py``), inside :func:`outbound`; meanwhile the DUL thread reads only when the
   sending thread lets it (:func:`_read_pdu`) and its clock does not watch the socket.

14. ``DULServiceProvider.state_machine``, ``Association._accepted_cx``, ``_sent_release``,
   ``DIMSEServiceProvider.message``, ``maximum_pdu_size``: a C-STORE request is read,
   stored and answered by the DUL thread that reads its PDUs (``inline.py``), without
   pynetdicom's P-DATA primitives, DIMSE messages, reactor thread or service class.

(4 and 13, the server glue both transports use, are in ``serving.py``.)
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import _config, evt

from pacs.dimse.guard import PduLimits
from pacs.dimse.transport import Transport, encoding
from pacs.dimse.transport.inline import InlineStore, Store
from pacs.dimse.transport.outbound import Outbound

log = logging.getLogger(__name__)

REACTOR_DELAY_S = 0.0001


def _receive_files(folder: Path) -> Any:
    """C-STORE data sets are written into files made ahead of time in ``folder`` (see 9.)."""
    from pynetdicom import dimse_messages

    from pacs.dimse.transport.receive_files import ReceiveFiles, file_meta, write_file_meta

    files = ReceiveFiles(folder)
    setattr(dimse_messages, "NamedTemporaryFile", files)  # noqa: B010
    setattr(dimse_messages, "create_file_meta", file_meta)  # noqa: B010
    setattr(dimse_messages, "write_file_meta_info", write_file_meta)  # noqa: B010
    return files


def enable_lean_store_requests() -> None:
    """Received C-STORE-RQ command sets are decoded by ``decoding.py`` (see 11. above)."""
    from pynetdicom.dimse_messages import DIMSEMessage

    global _PYNETDICOM_DECODE_MSG
    if DIMSEMessage.decode_msg is not _decode_msg:
        _PYNETDICOM_DECODE_MSG = DIMSEMessage.decode_msg
        DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]


_PYNETDICOM_DECODE_MSG: Any = None  # pynetdicom's, once replaced (for the tests)


def _lean_requests_heard() -> bool:
    """Whether C-STORE requests may bypass pynetdicom's messages: only while its standard log
    handlers are off (they would log every message, and look each one's class up exactly)."""
    return bool(_config.LOG_HANDLER_LEVEL == "none")


def _decode_msg(self: Any, primitive: Any, assoc: Any = None) -> bool:
    """pynetdicom 3.0's ``DIMSEMessage.decode_msg`` with a lean C-STORE-RQ command set."""
    from pynetdicom import dimse_messages
    from pynetdicom.dsutils import decode
    from pynetdicom.pdu_primitives import P_DATA

    from pacs.dimse.transport import decoding, encoding

    if primitive is None or primitive.__class__ != P_DATA:
        return False
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if not control & 1:  # a data set fragment
            if self._data_set_file:
                self._data_set_file.write(data[1:])
                self._data_set_file.flush()
            else:
                self.data_set.write(data[1:])
            if control & 2:
                return True
            continue
        self.encoded_command_set.write(data[1:])
        if not control & 2:
            continue
        self.context_id = context_id
        raw = self.encoded_command_set.getvalue()
        elements = decoding.store_request(raw) if _config.LOG_HANDLER_LEVEL == "none" else None
        if elements is not None:
            self.__class__ = decoding.ReceivedStoreRequest
            self._elements, self._raw = elements, raw
            if not decoding.has_data_set(elements):
                return True
            sop_class = decoding.text(elements[0x0002])
            sop_instance = decoding.text(elements[0x1000])
        else:
            self.command_set = decode(self.encoded_command_set, True, True)
            self.__class__ = dimse_messages._MESSAGE_TYPES[self.command_set.CommandField][1]
            if self.command_set.CommandDataSetType == encoding.NO_DATA_SET:
                return True
            if not (_config.STORE_RECV_CHUNKED_DATASET
                    and isinstance(self, dimse_messages.C_STORE_RQ)):
                continue
            sop_class = self.command_set.AffectedSOPClassUID
            sop_instance = self.command_set.AffectedSOPInstanceUID
        if _config.STORE_RECV_CHUNKED_DATASET:
            # looked up in pynetdicom's module each time: receive_files.py replaces them (9.)
            make_file: Any = getattr(dimse_messages, "NamedTemporaryFile")  # noqa: B009
            make_meta: Any = getattr(dimse_messages, "create_file_meta")  # noqa: B009
            write_meta: Any = getattr(dimse_messages, "write_file_meta_info")  # noqa: B009
            handle = make_file(delete=False, mode="wb", suffix=".dcm")
            own = getattr(make_file, "own", None)  # (receive_files.ReceiveFiles)
            if own is not None:
                own(handle, assoc)
            self._data_set_file = handle
            self._data_set_path = Path(handle.name)
            handle.write(b"\x00" * 128)
            handle.write(b"DICM")
            context = assoc._accepted_cx[context_id]
            write_meta(handle, make_meta(
                sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                transfer_syntax=context.transfer_syntax[0],
            ))
    return False


def install_service_class(choose: Callable[[str], type[Any] | None]) -> None:
    """Requests are served by ``choose(uid)`` when it names a class (see 5. above), else by
    pynetdicom's choice."""
    from pynetdicom import association

    current: Any = getattr(association, "uid_to_service_class")  # noqa: B009 (not exported)
    original = getattr(current, "__wrapped__", current)

    def chosen(uid: str) -> type[Any]:
        return choose(uid) or original(uid)

    chosen.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(association, "uid_to_service_class", chosen)  # noqa: B010


MAX_QUEUED_PDUS = 8


def send_when_drained(assoc: Any, primitives: list[Any]) -> None:
    """Queue P-DATA primitives for the DUL once fewer than ``MAX_QUEUED_PDUS`` wait (see 7.);
    on an association with an :class:`Outbound` (15.), write them to its socket."""
    dul = assoc.dul
    outbound = getattr(dul, "_pacs_outbound", None)
    if outbound is not None:
        outbound.write(b"".join(
            encoding.pdu(context_id, value)
            for primitive in primitives
            for context_id, value in primitive.presentation_data_value_list))
        return
    queue = dul.to_provider_queue
    while queue.qsize() >= MAX_QUEUED_PDUS and assoc.is_established:
        time.sleep(0.0001)
    for primitive in primitives:
        dul.send_pdu(primitive)


@contextmanager
def reactor_paused(assoc: Any) -> Iterator[None]:
    """Hold a requestor association's reactor paused for a batch of requests (see 6. above):
    pynetdicom pauses it around each ``send_c_store``, which costs up to one reactor turn
    (1 ms) per request and races with the previous request's resume."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused and assoc.is_established:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


_UNLIMITED_PDU = 1 << 26  # what a requestor reads when its AE advertised no maximum (0)


def requested(assoc: Any) -> None:
    """An association pacs requests, as its connection opens: tuned (1., 2.), its DUL woken
    by work (10.: a polling DUL thread would take the GIL from the sender ten thousand times a
    second), its PDUs read by ours (12.), so that :func:`outbound` can take the responses to
    what it sends (15.)."""
    tune_association(assoc, acceptor=False)
    _wake_on_work(assoc.dul)
    assoc.bind(evt.EVT_CONN_CLOSE, _requested_closed)
    ae = assoc.ae
    bound_pdus(assoc, PduLimits(max_pdu=int(ae.maximum_pdu_size or 0) or _UNLIMITED_PDU,
                                read_timeout=float(ae.network_timeout or 60)))


@contextmanager
def sending(assoc: Any) -> Iterator[None]:
    """A requestor's batch of C-STORE requests: its reactor paused (6.), its requests and
    their responses by :func:`outbound` (15.)."""
    with reactor_paused(assoc), outbound(assoc):
        yield


@contextmanager
def outbound(assoc: Any) -> Iterator[None]:
    """C-STORE requests sent on ``assoc`` meanwhile (:func:`send_file`) are written to its
    socket by the calling thread, their responses taken from its DUL thread (15.): for an
    association whose PDUs our reader reads (``bound_pdus``), else pynetdicom's way."""
    dul = assoc.dul
    if not hasattr(dul, "_pacs_outbound") or dul.socket is None or dul.socket.socket is None:
        yield
        return
    dul._pacs_outbound = Outbound(assoc)
    try:
        yield
    finally:
        dul._pacs_outbound = None
        waker = getattr(dul, "_pacs_waker", None)
        if waker is not None:
            waker.wake()  # it may sleep without watching the socket (15.)


def connected(assoc: Any) -> bool:
    """Whether ``assoc`` can still carry requests: established, and its DUL still in Sta6
    (while :func:`sending` holds its reactor paused, ``is_established`` is not updated when
    the peer aborts)."""
    return bool(assoc.is_established and assoc.dul.state_machine.current_state == "Sta6")


def _requested_closed(event: Any) -> None:
    release_association(event.assoc)


def send_file(
    assoc: Any, path: Path, *, msg_id: int, originator_aet: str | None,
    originator_id: int | None, meanwhile: Callable[[], None] | None = None,
) -> Any:
    """``send_c_store(path)``, for use inside :func:`reactor_paused` or :func:`outbound`:
    the data set streams from the file unchanged. Returns the response's status Dataset
    (empty when the peer did not answer). ``meanwhile`` runs once: while the peer stores
    the request (:class:`Outbound`), else before it is sent."""
    sender = getattr(assoc.dul, "_pacs_outbound", None)
    if sender is not None:
        answer = sender.send_file(path, msg_id=msg_id, originator_aet=originator_aet,
                                  originator_id=originator_id, meanwhile=meanwhile)
        if answer is not None:
            return answer
    if meanwhile is not None:
        meanwhile()
    if assoc._reactor_checkpoint.is_set():  # a C-GET's, on the thread serving it
        return assoc.send_c_store(path, msg_id=msg_id, originator_aet=originator_aet,
                                  originator_id=originator_id)
    from pydicom.dataset import Dataset
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import split_dataset

    file_meta, offset = split_dataset(path)
    request = C_STORE()
    request.MessageID = msg_id
    request.Priority = 2
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request.AffectedSOPClassUID = file_meta.MediaStorageSOPClassUID
    request.AffectedSOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    request._dataset_path = (path, offset)
    context = assoc._get_valid_context(
        file_meta.MediaStorageSOPClassUID, file_meta.TransferSyntaxUID, "scu",
        allow_conversion=False,
    )
    assoc.dimse.send_msg(request, context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    if response is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(response)


def tune_association(assoc: Any, *, acceptor: bool = True) -> None:
    """TCP_NODELAY and a short reactor poll delay, before the association starts; an
    acceptor's reactors wake when there is work instead of polling (see 8. and 10. above)."""
    raw = assoc.dul.socket.socket
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc.dul._run_loop_delay = REACTOR_DELAY_S
    if acceptor:
        assoc._run_reactor = types.MethodType(_acceptor_reactor, assoc)
        assoc.dul.to_user_queue = _WakingQueue(assoc.dimse.msg_queue)
        _wake_on_work(assoc.dul)


def release_association(assoc: Any) -> None:
    """Free what :func:`tune_association` gave an association (its waker's pipe)."""
    waker = getattr(assoc.dul, "_pacs_waker", None)
    if waker is not None:
        assoc.dul._pacs_waker = None
        waker.close()


DUL_IDLE_WAIT_S = 0.005  # timers (ARTIM, idle, kill) are checked at least this often


class _Waker:
    """A socket pair the DUL reactor sleeps on: a byte written means "a primitive is queued".

    Socket objects, not raw descriptors: once closed, a late ``wake`` (a primitive queued
    after the connection closed) or a ``select`` on it fails, where a write to a raw
    descriptor number could land in whatever connection reused that number since."""

    def __init__(self) -> None:
        self.reader, writer = socket.socketpair()
        self.reader.setblocking(False)
        writer.setblocking(False)
        self._writer: socket.socket | None = writer
        self._lock = threading.Lock()  # wake and close

    def wake(self) -> None:
        with self._lock:
            if self._writer is None:
                return
            try:
                self._writer.send(b"\0")
            except OSError:
                pass  # full: already woken

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass  # empty, or closed meanwhile

    def close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.reader.close()


def _wake_on_work(dul: Any) -> None:
    """Give ``dul`` a waker, signalled by every ``send_pdu`` (see 10. above)."""
    global _CLOCK_INSTALLED
    waker = _Waker()
    dul._pacs_waker = waker
    queue_primitive = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        queue_primitive(primitive)
        waker.wake()

    dul.send_pdu = send_pdu
    if not _CLOCK_INSTALLED:
        from pynetdicom import dul as dul_module

        setattr(dul_module, "time", _DulClock())  # noqa: B010
        _CLOCK_INSTALLED = True


_CLOCK_INSTALLED = False


class _DulClock:
    """Stands in for the ``time`` module inside ``pynetdicom.dul``: ``sleep`` in a DUL thread
    that has a waker waits in ``select`` for its socket or its waker instead."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = threading.current_thread()
        waker = getattr(dul, "_pacs_waker", None)
        transport = getattr(dul, "socket", None)
        raw = getattr(transport, "socket", None) if transport is not None else None
        if waker is None or raw is None or getattr(dul, "_kill_thread", False):
            time.sleep(seconds)
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted bytes wait in OpenSSL's buffer: select would not see them
        outbound = getattr(dul, "_pacs_outbound", None)
        watched = [waker.reader] if outbound is not None and outbound.reads_itself else [
            waker.reader, raw]  # (the sending thread reads the responses: 15.)
        try:
            ready, _, _ = select.select(watched, [], [], DUL_IDLE_WAIT_S)
        except (OSError, ValueError):  # the socket was closed under us
            time.sleep(seconds)
            return
        if waker.reader in ready:
            waker.drain()


# an acceptor's reactor thread wakes for a DIMSE message or a primitive from its DUL (release,
# abort: :class:`_WakingQueue`), and at least this often for its timers and a kill
REACTOR_IDLE_WAIT_S = 0.05


class _WakingQueue(queue.Queue[Any]):
    """The DUL's ``to_user_queue`` (8.): what its state machine puts there (an A-RELEASE
    request, an abort, the end of the connection) also wakes the association's reactor,
    which otherwise sleeps on its DIMSE message queue, where C-STOREs no longer arrive
    (``inline.py``)."""

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self._messages = messages

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self._messages.not_empty:  # (after the put: never both queues' locks at once)
            self._messages.not_empty.notify_all()


def _wait_for_message(assoc: Any, timeout: float) -> None:
    """Sleep until a DIMSE message is queued for ``assoc``, at most ``timeout`` seconds."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages.queue:  # (qsize() would take the lock we hold)
            messages.not_empty.wait(timeout)


def _acceptor_reactor(self: Any) -> None:
    """pynetdicom 3.0's ``Association._run_reactor``, waiting on the message queue rather than
    sleeping 1 ms per turn, and restarting the idle timer (network timeout) after a request.
    Only for acceptors whose requests are served on this thread (no other thread calls
    ``send_*`` on them, so the pause handshake is never contended)."""
    self._is_paused = False
    while not self._kill:
        _wait_for_message(self, REACTOR_IDLE_WAIT_S)
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)
            # the idle time counts from the answer: a long C-MOVE is not idleness
            self.dul._idle_timer.restart()
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            log.error("DIMSE network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def partial_dataset_file(assoc: Any) -> Path | None:
    """The temporary file of a C-STORE dataset still being received, if any."""
    message = getattr(assoc.dimse, "message", None)
    handle = getattr(message, "_data_set_file", None) if message is not None else None
    if handle is None:
        return None
    handle.close()
    return Path(handle.name)


_PDU_HEADER = struct.Struct(">BxL")  # PDU-type, reserved, PDU-length (PS3.8 9.3.1)
_INVALID_PDU_PARAMETER_VALUE = 0x06  # A-ABORT reason/diag. (PS3.8 9.3.8)
_REASON_NOT_SPECIFIED = 0x00


def bound_pdus(assoc: Any, limits: PduLimits,
               refused: Callable[[Any, str], None] | None = None) -> None:
    """An acceptor's PDUs are read by :func:`_read_pdu` within ``limits`` (see 12. above);
    ``refused(assoc, reason)`` is told of each connection closed for exceeding them."""
    dul = assoc.dul
    dul._pacs_limits = limits
    dul._pacs_refused = refused
    dul._pacs_inline = None
    dul._pacs_outbound = None
    dul._read_pdu_data = types.MethodType(_read_pdu, dul)
    raw = dul.socket.socket
    if raw is not None:
        _wait_at_most(raw, limits.read_timeout)


def _wait_at_most(raw: socket.socket, seconds: float) -> None:
    """Each recv and send on ``raw`` waits at most ``seconds``, then fails with EAGAIN: the
    kernel's timeouts, not ``settimeout``, which costs a ``poll`` before every call. An
    ``SSLSocket`` gets ``settimeout`` (TimeoutError): it polls only when OpenSSL wants more
    bytes, and a blocking one would retry a read the kernel's timeout ended."""
    if isinstance(raw, ssl.SSLSocket):
        raw.settimeout(max(seconds, 1e-6))
        return
    whole = int(seconds)
    micro = max(int((seconds - whole) * 1_000_000), 0 if whole else 1)  # (0 s: no timeout)
    value = struct.pack("ll", whole, micro)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _read_pdu(self: Any) -> None:
    """pynetdicom 3.0's ``DULServiceProvider._read_pdu_data`` (the same events, in the same
    order), with the PDU's length checked before its body is read and the whole PDU due
    within the read timeout. While an :class:`Outbound` may read responses on its own
    thread (15.), only when it lets this thread read."""
    outbound = self._pacs_outbound
    if outbound is not None:
        outbound.dul_read(lambda: _read_one_pdu(self))
    else:
        _read_one_pdu(self)


def _read_one_pdu(self: Any) -> None:
    limits: PduLimits = self._pacs_limits
    raw = self.socket.socket
    header = bytearray(6)
    try:
        deadline = time.monotonic() + limits.read_timeout
        if not _receive_into(raw, memoryview(header), deadline, limits.read_timeout):
            _closed_by_peer(self)
            return
        pdu_type, pdu_length = _PDU_HEADER.unpack(header)
        if pdu_type >= len(limits.by_type) or not limits.by_type[pdu_type]:
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.event_queue.put("Evt19")
            return
        if pdu_length > limits.by_type[pdu_type]:
            _close(self, _INVALID_PDU_PARAMETER_VALUE,
                   f"PDU of type {pdu_type} too long ({pdu_length} bytes, "
                   f"at most {limits.by_type[pdu_type]})")
            return
        pdu = bytearray(6 + pdu_length)
        pdu[:6] = header
        if not _receive_into(raw, memoryview(pdu)[6:], deadline, limits.read_timeout):
            log.error("The received PDU is shorter than expected")
            _closed_by_peer(self)
            return
    except (TimeoutError, BlockingIOError):
        _close(self, _REASON_NOT_SPECIFIED,
               f"no complete PDU within {limits.read_timeout:g} s")
        return
    except OSError as exc:
        log.error("Connection closed before the entire PDU was received: %s", exc)
        self.event_queue.put("Evt17")
        return
    inline = self._pacs_inline
    if pdu_type == 0x04 and inline is not None and inline.offer(pdu):
        self._idle_timer.restart()  # (pynetdicom's loop does on a PDU: here it never sees it)
        return
    outbound = self._pacs_outbound
    if pdu_type == 0x04 and outbound is not None and outbound.offer(pdu):
        self._idle_timer.restart()
        return
    try:
        decoded, event = self._decode_pdu(pdu)
    except Exception as exc:
        log.error("Unable to decode the received PDU data: %s", exc)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(decoded)


def _closed_by_peer(dul: Any) -> None:
    """Evt17; before an association exists, the acceptor waiting for its A-ASSOCIATE-RQ is
    woken too (pynetdicom's waits for the ARTIM time, holding the connection's count)."""
    dul.event_queue.put("Evt17")
    if dul.state_machine.current_state == "Sta2":
        dul.to_user_queue.put(None)  # (receive_pdu then returns None: no request came)


def _receive_into(raw: Any, view: memoryview, deadline: float, timeout: float) -> bool:
    """Fill ``view`` from ``raw`` by ``deadline`` (TimeoutError or BlockingIOError past it);
    False if the peer closed first. One ``recv_into`` when the data is there; the socket's
    timeout is shortened to what is left of the deadline only when it is not."""
    got, size = 0, len(view)
    shortened = False
    try:
        while got < size:
            count = raw.recv_into(view[got:])
            if not count:
                return False
            got += count
            if got < size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                _wait_at_most(raw, left)
                shortened = True
    finally:
        if shortened:
            _wait_at_most(raw, timeout)
    return True


ABORT_DRAIN_S = 0.5  # how long a connection being aborted is read (and dropped) at most
ABORT_DRAIN_BYTES = 4 << 20  # and how much of it


def _drain(raw: socket.socket) -> None:
    """Read and drop what the peer still sends, until it closes, for at most
    ``ABORT_DRAIN_S`` seconds and ``ABORT_DRAIN_BYTES`` bytes: a connection closed with
    unread bytes is reset, and a peer that is reset may never read the A-ABORT before it
    (a peer still writing the data set we refused, say)."""
    deadline = time.monotonic() + ABORT_DRAIN_S
    dropped = 0
    while dropped < ABORT_DRAIN_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([raw], [], [], left)
        if not ready:
            return
        chunk = raw.recv(65536, socket.MSG_DONTWAIT)
        if not chunk:
            return  # the peer closed: no reset
        dropped += len(chunk)


def _close(dul: Any, reason: int, why: str) -> None:
    """Send A-ABORT (PS3.8 9.3.8, source: service provider), let the peer read it
    (:func:`_drain`) and close the connection: Evt17 for the state machine, as if the peer
    had closed it. Before an association exists, the acceptor waiting for its
    A-ASSOCIATE-RQ is woken at once."""
    from pynetdicom.pdu import A_ABORT_RQ

    assoc = dul.assoc
    log.warning("closing the DIMSE connection from %s: %s", assoc.requestor.address, why)
    abort = A_ABORT_RQ()
    abort.source = 0x02
    abort.reason_diagnostic = reason
    raw = dul.socket.socket
    try:
        raw.send(abort.encode())
        if not isinstance(raw, ssl.SSLSocket):
            raw.shutdown(socket.SHUT_WR)  # the A-ABORT, then the end of what we send
            _drain(raw)
    except OSError:
        pass  # the peer is gone or does not read: closing is all that is left
    waiting = dul.state_machine.current_state == "Sta2"
    dul.socket.close()
    if waiting:
        dul.to_user_queue.put(None)  # (receive_pdu then returns None: no request came)
    refused = dul._pacs_refused
    if refused is not None:
        refused(assoc, why)




class FastTransport(Transport):
    """pacs's fast path over pynetdicom 3.0 (the items above)."""

    name = "fast"
    fast_service_classes = True  # Q/R by qr.py's service classes (5.)

    def install(self) -> None:
        super().install()
        enable_lean_store_requests()

    def __init__(self) -> None:
        self._files: Any = None

    def receive_files(self, folder: Path) -> Any:
        self._files = _receive_files(folder)
        return self._files

    def accepted(self, assoc: Any, limits: PduLimits | None,
                 refused: Callable[[Any, str], None] | None = None,
                 store: Store | None = None) -> None:
        tune_association(assoc)
        if limits is not None:
            bound_pdus(assoc, limits, refused)
            if store is not None and self._files is not None and _lean_requests_heard():
                assoc.dul._pacs_inline = InlineStore(assoc.dul, store, self._files)

    def closed(self, assoc: Any) -> Path | None:
        release_association(assoc)
        inline = getattr(assoc.dul, "_pacs_inline", None)
        partial = inline.partial() if inline is not None else None
        partial = partial or partial_dataset_file(assoc)
        if self._files is not None:
            self._files.release(assoc)  # (after partial: the caller removes that one)
        return partial

    def requested(self, assoc: Any) -> None:
        requested(assoc)

    def connected(self, assoc: Any) -> bool:
        return connected(assoc)

    def sending(self, assoc: Any) -> AbstractContextManager[None]:
        return sending(assoc)

    def send_file(self, assoc: Any, path: Path, *, msg_id: int, originator_aet: str | None,
                  originator_id: int | None) -> Any:
        return send_file(assoc, path, msg_id=msg_id, originator_aet=originator_aet,
                         originator_id=originator_id)

    def serve_requests_with(self, choose: Callable[[str], type[Any] | None]) -> None:
        """Requests are served by ``choose(uid)`` when it names a class (5.)."""
        install_service_class(choose)


# The upstream code this module and serving.py replace, copy, wrap or rely on, by the SHA-256
# (first 16 hex digits) of its source in pynetdicom 3.0.4; a release that changes any of them
# fails tests/dimse/test_transport.py, which names the items above to look at again.
UPSTREAM: dict[str, tuple[str, str]] = {  # upstream function: (hash, the items relying on it)
    "pynetdicom.dul.DULServiceProvider.run_reactor": ("e3a10eb3a0931e48", "2, 10"),
    "pynetdicom.dul.DULServiceProvider.send_pdu": ("7cbce5da8594124e", "7, 10"),
    "pynetdicom.dul.DULServiceProvider._process_recv_primitive": ("4c0ebbb3e646e35e", "7"),
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": ("19f2d4e38c13c835", "12 (copied)"),
    "pynetdicom.dul.DULServiceProvider._decode_pdu": ("fc71dd1bf853e1ce", "12"),
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": ("f51c777e841a76be", "3, 9, 11 (copied)"),
    "pynetdicom.dsutils.create_file_meta": ("035ed415f5aeea15", "9"),
    "pynetdicom.sop_class.uid_to_service_class": ("88fa4636b8cbaacd", "5"),
    "pynetdicom.association.Association._serve_request": ("2f24c1759cdf6c8c", "5"),
    "pynetdicom.association.Association._run_reactor": ("f28838c5559e462a", "8 (copied)"),
    "pynetdicom.association.Association.send_c_store": ("fa5a8127f349f8e7", "6 (copied)"),
    "pynetdicom.association.Association._get_valid_context": ("117a52c2ae6720e0", "6"),
    "pynetdicom.association.Association._check_received_status": ("364c3ae215b58646", "6"),
    "pynetdicom.association.Association._handle_no_response": ("6f3d62518395c3a8", "6"),
    "pynetdicom.service_class.StorageServiceClass.SCP": ("63afca7fc6c6e7ee", "5 (qr.StorageSCP)"),
    "pynetdicom.transport.RequestHandler.handle": ("034823fb4df3a874", "serving.py (copied)"),
    "pynetdicom.transport.RequestHandler._create_association": (
        "05c8d12b79863cdb", "serving.py"),
    "pynetdicom.ae.ApplicationEntity.start_server": ("d3868a2df83d3cc0", "serving.py"),
}
