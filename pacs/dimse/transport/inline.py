"""C-STORE requests served on the thread that reads the connection (the fast transport, 14.).

pynetdicom hands each received P-DATA-TF PDU through its state machine (an event, a P-DATA
primitive, the DIMSE provider's reassembly), queues the complete message for the association's
reactor thread, which runs the service class and the handler, and queues the response back for
the DUL thread to encode and send: three threads and a dozen Python objects per C-STORE, under
one GIL. Here the DUL thread, having read a P-DATA-TF PDU whole (``fast._read_pdu``), offers it
to :class:`InlineStore` first:

* a PDU whose first PDV is a whole C-STORE-RQ command set (read by ``decoding.py``) on an
  accepted presentation context of its SOP class, with pynetdicom's DIMSE provider between
  messages, starts a receive: the command's data set fragments go straight into a receive file
  (``receive_files.py``: File Meta Information first, hashed as written);
* the PDV that ends the data set runs the store (``store(assoc, request, path, digest,
  failure)``, the same handler as on pynetdicom's path) on this thread, and the C-STORE-RSP is
  written to the socket from here, encoded by ``encoding.py``.

Anything else (a C-FIND, a C-ECHO, a command set split over PDUs, an unexpected element, a
rejected context, the association being released) is declined before a byte of it is used,
and pynetdicom reads it as published. A PDU that breaks the protocol in the middle of a data
set (a command fragment, another presentation context, a malformed PDV) aborts the association,
as PS3.8 9.3.5 leaves no other reading of it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs.dimse.transport import decoding, encoding

log = logging.getLogger(__name__)

_ITEM = struct.Struct(">LBB")  # PDV item: length, presentation context ID, control header
_INVALID_PDU_PARAMETER_VALUE = 0x06


@dataclass(frozen=True)
class StoreRequest:
    """What the store handler needs of a received C-STORE-RQ (PS3.7 9.3.1.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    message_id: int
    context_id: int


# store(assoc, request, path, digest) -> (status, error comment): the handler of
# ``handlers.DimseHandlers.store_received``
Store = Callable[[Any, StoreRequest, Path, "tuple[str, int] | None", "str | None"],
                 tuple[int, str]]


class _Receiving:
    def __init__(self, request: StoreRequest, handle: Any) -> None:
        self.request = request
        self.handle = handle


class InlineStore:
    """The C-STORE receive of one acceptor association, run by its DUL thread."""

    def __init__(self, dul: Any, store: Store, files: Any) -> None:
        self.dul = dul
        self.assoc = dul.assoc
        self.store = store
        self.files = files  # receive_files.ReceiveFiles
        self.receiving: _Receiving | None = None

    def partial(self) -> Path | None:
        """The file of a data set still being received (closed), if any."""
        receiving, self.receiving = self.receiving, None
        if receiving is None:
            return None
        receiving.handle.close()
        self.files.forget(Path(receiving.handle.name))
        return Path(receiving.handle.name)

    def offer(self, pdu: bytearray) -> bool:
        """Serve the P-DATA-TF ``pdu`` here (True), or decline it untouched (False)."""
        items = _items(pdu)
        if self.receiving is None:
            if items is None or not self._start(pdu, items[0]):
                return False
            items = items[1:]
        elif items is None:
            self._abort("malformed PDV item in a C-STORE data set")
            return True
        receiving = self.receiving
        assert receiving is not None
        view = memoryview(pdu)
        for context_id, control, start, end in items:
            if control & 0x01 or context_id != receiving.request.context_id:
                self._abort("a C-STORE data set interrupted by another message")
                return True
            receiving.handle.write(view[start:end])
            if control & 0x02:
                self.receiving = None
                self._serve(receiving)
                return True
        return True

    def _start(self, pdu: bytearray, first: tuple[int, int, int, int]) -> bool:
        context_id, control, start, end = first
        assoc = self.assoc
        if (control & 0x03) != 0x03 or assoc._sent_release or not assoc.is_established:
            return False  # a command set in several fragments, data first: pynetdicom's
        if self.dul.state_machine.current_state != "Sta6" or assoc.dimse.message is not None:
            return False
        elements = decoding.store_request(bytes(pdu[start:end]))
        if elements is None or not decoding.has_data_set(elements):
            return False
        context = assoc._accepted_cx.get(context_id)
        sop_class = decoding.text(elements[0x0002])
        if context is None or str(context.abstract_syntax) != sop_class:
            return False  # pynetdicom aborts or answers as it does
        if not _stored_by_storage_service(sop_class):
            return False  # (a C-STORE on a Verification or Q/R context: pynetdicom's answer)
        request = StoreRequest(
            sop_class_uid=sop_class,
            sop_instance_uid=decoding.text(elements[0x1000]),
            message_id=decoding.us(elements[0x0110]),
            context_id=context_id,
        )
        handle = self.files()
        handle.write(b"\x00" * 128 + b"DICM")
        from pacs.dimse.transport.receive_files import file_meta, write_file_meta

        write_file_meta(handle, file_meta(
            sop_class_uid=request.sop_class_uid, sop_instance_uid=request.sop_instance_uid,
            transfer_syntax=context.transfer_syntax[0]))
        self.receiving = _Receiving(request, handle)
        return True

    def _serve(self, receiving: _Receiving) -> None:
        request, handle = receiving.request, receiving.handle
        handle.close()
        path = Path(handle.name)
        failure = self.files.failure(path)
        digest = self.files.written(path) if failure is None else None
        try:
            status, comment = self.store(self.assoc, request, path, digest, failure)
        except Exception:  # a handler bug must not kill the association (as pynetdicom's)
            log.exception("C-STORE handler failed")
            status, comment = 0xC211, ""
        finally:
            path.unlink(missing_ok=True)  # the store moved it into place, else left over
        command = encoding.command_set(
            sop_class_uid=request.sop_class_uid,
            command_field=encoding.C_STORE_RSP,
            message_id_responded_to=request.message_id,
            status=status,
            sop_instance_uid=request.sop_instance_uid,
            error_comment=comment or None,
        )
        # fragments within the Maximum Length the requestor can receive (PS3.8 D.1)
        self._send(encoding.pdus(request.context_id, command, None,
                                 int(self.assoc.dimse.maximum_pdu_size or 0)))

    def _send(self, data: bytes) -> None:
        raw = self.dul.socket.socket
        try:
            raw.sendall(data)
        except OSError as error:  # the peer is gone or does not read
            log.warning("cannot send a C-STORE response: %s", error)
            self.dul.event_queue.put("Evt17")

    def _abort(self, why: str) -> None:
        from pacs.dimse.transport.fast import _close

        partial = self.partial()
        if partial is not None:
            partial.unlink(missing_ok=True)
        _close(self.dul, _INVALID_PDU_PARAMETER_VALUE, why)


def _stored_by_storage_service(sop_class: str) -> bool:
    """Whether the service class pynetdicom picks for ``sop_class`` (pacs's choice, on the
    fast transport: ``qr.py``) is a Storage service class: a C-STORE of any other class
    gets that class's answer, as on pynetdicom's path."""
    from pynetdicom import association
    from pynetdicom.service_class import StorageServiceClass

    choose: Callable[[str], Any] = getattr(association, "uid_to_service_class")  # noqa: B009
    chosen = choose(sop_class)
    return isinstance(chosen, type) and issubclass(chosen, StorageServiceClass)


def _items(pdu: bytearray) -> list[tuple[int, int, int, int]] | None:
    """The PDV items of a P-DATA-TF PDU: (context ID, control header, start, end of the
    fragment); None when one is malformed (PS3.8 9.3.5.1)."""
    items = []
    offset, end = 6, len(pdu)
    if end <= offset:
        return None
    while offset < end:
        if end - offset < 6:
            return None
        length, context_id, control = _ITEM.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((context_id, control, offset + 6, offset + 4 + length))
        offset += 4 + length
    return items
