"""A lean decoder for the message the SCP receives most: the C-STORE-RQ command set.

pynetdicom decodes every received command set into a pydicom ``Dataset`` and copies it,
element by element, into a primitive: about 0.2 ms of Python per C-STORE on this machine,
a twentieth of a small instance's store. A C-STORE-RQ's command set (PS3.7 9.3.1.1) holds at
most eight elements, Implicit VR Little Endian (PS3.7 6.3.1); :func:`store_request` reads
them with ``struct``. Anything else, or a C-STORE-RQ with an element it does not expect, is
left to pynetdicom (``None``), so that odd requests get pynetdicom's answer unchanged.
:class:`ReceivedStoreRequest` is the message pynetdicom carries along; its pydicom command set
is decoded only if something asks for it. ``tests/dimse/test_decoding.py`` checks both against
pynetdicom's own decoding.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

from pacs.dimse.transport.encoding import NO_DATA_SET

_HEAD = struct.Struct("<HHI")
_US = struct.Struct("<H")

C_STORE_RQ_FIELD = 0x0001

# element number (group 0000) → VR, for every element a C-STORE-RQ may carry (PS3.7 E.1-1)
_ELEMENTS = {
    0x0000: "UL",  # Command Group Length
    0x0002: "UI",  # Affected SOP Class UID
    0x0100: "US",  # Command Field
    0x0110: "US",  # Message ID
    0x0700: "US",  # Priority
    0x0800: "US",  # Command Data Set Type
    0x1000: "UI",  # Affected SOP Instance UID
    0x1030: "AE",  # Move Originator Application Entity Title
    0x1031: "US",  # Move Originator Message ID
}
_REQUIRED = (0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000)
_SIZES = {"US": 2, "UL": 4}


def store_request(raw: bytes) -> dict[int, bytes] | None:
    """The elements of a C-STORE-RQ command set by element number, or None when ``raw`` is
    not a well-formed C-STORE-RQ made only of the elements above (pynetdicom decodes it)."""
    elements = _command_elements(raw, _ELEMENTS, plain_text=True)
    if elements is None:
        return None
    if any(element not in elements for element in _REQUIRED):
        return None
    if _US.unpack(elements[0x0100])[0] != C_STORE_RQ_FIELD:
        return None
    return elements


C_STORE_RSP_FIELD = 0x8001
# element number → VR of what a C-STORE-RSP may carry (PS3.7 9.3.1.2, C.4.2.1.4 statuses)
_RESPONSE_ELEMENTS = {
    0x0000: "UL",  # Command Group Length
    0x0002: "UI",  # Affected SOP Class UID
    0x0100: "US",  # Command Field
    0x0120: "US",  # Message ID Being Responded To
    0x0800: "US",  # Command Data Set Type
    0x0900: "US",  # Status
    0x0901: "AT",  # Offending Element
    0x0902: "LO",  # Error Comment
    0x0903: "US",  # Error ID
    0x1000: "UI",  # Affected SOP Instance UID
}


def store_response(raw: bytes) -> tuple[int, int, str] | None:
    """(Message ID Being Responded To, Status, Error Comment) of a C-STORE-RSP command set
    without a data set, or None when ``raw`` is anything else (pynetdicom decodes it)."""
    elements = _command_elements(raw, _RESPONSE_ELEMENTS, plain_text=False)
    if elements is None:
        return None
    if any(e not in elements for e in (0x0100, 0x0120, 0x0800, 0x0900)):
        return None
    if us(elements[0x0100]) != C_STORE_RSP_FIELD or has_data_set(elements):
        return None
    comment = elements.get(0x0902, b"").decode("ascii", "replace").strip("\x00 ")
    return us(elements[0x0120]), us(elements[0x0900]), comment


def _command_elements(raw: bytes, known: dict[int, str], *, plain_text: bool
                      ) -> dict[int, bytes] | None:
    """A command set's elements by element number (Implicit VR Little Endian, group 0000),
    or None when one is not in ``known`` (element → VR), repeats, overruns, or has a binary
    value of the wrong length; with ``plain_text``, also when a text value is not plain ASCII
    without a backslash (pydicom reads such text its way)."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _HEAD.unpack_from(raw, offset)
        offset += 8
        vr = known.get(element)
        if group != 0 or vr is None or element in elements or length > end - offset:
            return None
        value = raw[offset:offset + length]
        if vr in _SIZES:
            if length != _SIZES[vr]:
                return None
        elif plain_text and (not value.isascii() or b"\\" in value):
            return None
        elements[element] = value
        offset += length
    return elements


def has_data_set(elements: dict[int, bytes]) -> bool:
    """Command Data Set Type (0000,0800): 0x0101 means none (PS3.7 E.1-1)."""
    return bool(_US.unpack(elements[0x0800])[0] != NO_DATA_SET)


def text(value: bytes) -> str:
    """A UI or AE value as pydicom gives it: trailing padding (NUL, space) removed; AE
    leading spaces too (PS3.5 6.2: they are not significant)."""
    return value.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ")


def us(value: bytes) -> int:
    return int(_US.unpack(value)[0])


class ReceivedStoreRequest(C_STORE_RQ):
    """A C-STORE-RQ read by :func:`store_request`; set as a received message's class by
    ``fast._decode_msg``, with ``_elements`` and ``_raw`` (the encoded command set)."""

    _elements: dict[int, bytes]
    _raw: bytes

    @property
    def command_set(self) -> Dataset:
        """pydicom's decoding of the command set, made the first time it is asked for."""
        decoded = self.__dict__.get("_decoded_command_set")
        if decoded is None:
            decoded = decode(BytesIO(self._raw), True, True)
            self.__dict__["_decoded_command_set"] = decoded
        return decoded

    @command_set.setter
    def command_set(self, value: Dataset) -> None:
        self.__dict__["_decoded_command_set"] = value

    def message_to_primitive(self) -> Any:
        """What ``DIMSEMessage.message_to_primitive`` makes of a C-STORE-RQ: the same
        attributes, set through the primitive's validating setters."""
        elements = self._elements
        primitive = C_STORE()
        primitive.MessageID = us(elements[0x0110])
        primitive.AffectedSOPClassUID = text(elements[0x0002])
        primitive.AffectedSOPInstanceUID = text(elements[0x1000])
        primitive.Priority = us(elements[0x0700])
        if 0x1030 in elements:
            primitive.MoveOriginatorApplicationEntityTitle = text(elements[0x1030])
        if 0x1031 in elements:
            primitive.MoveOriginatorMessageID = us(elements[0x1031])
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive
