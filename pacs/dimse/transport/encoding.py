"""Lean encoders for the messages the SCP sends most: response command sets and C-FIND
response identifiers, written straight to bytes and sent as P-DATA.

pynetdicom builds every response as a pydicom ``Dataset`` and encodes it with pydicom's
writer, the command set twice (once more for its group length): about two thirds of the
Python time of a C-FIND response and a good part of a C-STORE's (py-spy). The encodings here
are the plain ones of PS3.5 7.1 (little endian, explicit or implicit VR) and PS3.7 6.3.1 (a
command set is always Implicit VR Little Endian); ``tests/dimse/test_encoding.py`` checks them
against pydicom's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.valuerep import DSfloat
from pynetdicom.pdu_primitives import P_DATA

# Command Field values, PS3.7 E.1
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RSP = 0x8010
C_FIND_RSP = 0x8020
C_MOVE_RSP = 0x8021
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT",
                       "SV", "UV"})
_BINARY_US = frozenset({"US", "SS"})


def command_set(
    *,
    sop_class_uid: str,
    command_field: int,
    message_id_responded_to: int,
    status: int,
    data_set: bool = False,
    sop_instance_uid: str | None = None,
    error_comment: str | None = None,
    counts: Sequence[int | None] | None = None,
) -> bytes:
    """A response command set (PS3.7 9.3, 10.3), Implicit VR Little Endian, with its group
    length. ``counts``: remaining, completed, failed, warning sub-operations (None: absent)."""
    elements = [
        _implicit(0x00000002, _text(sop_class_uid, "UI")),
        _implicit(0x00000100, struct.pack("<H", command_field)),
        _implicit(0x00000120, struct.pack("<H", message_id_responded_to & 0xFFFF)),
        _implicit(0x00000800, struct.pack("<H", DATA_SET_PRESENT if data_set else NO_DATA_SET)),
        _implicit(0x00000900, struct.pack("<H", status)),
    ]
    if sop_instance_uid:
        elements.append(_implicit(0x00001000, _text(sop_instance_uid, "UI")))
    if error_comment:
        elements.append(_implicit(0x00000902, _text(error_comment[:64], "LO")))
    if counts is not None:
        for tag, count in zip((0x00001020, 0x00001021, 0x00001022, 0x00001023), counts,
                              strict=True):
            if count is not None:
                elements.append(_implicit(tag, struct.pack("<H", count)))
    elements.sort(key=lambda element: element[0])
    body = b"".join(encoded for _, encoded in elements)
    return _implicit(0x00000000, struct.pack("<I", len(body)))[1] + body


def store_request(*, sop_class_uid: str, sop_instance_uid: str, message_id: int,
                  priority: int = 2, originator_aet: str | None = None,
                  originator_id: int | None = None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), a data set following, Implicit VR Little
    Endian, with its group length; the Move Originator's AE title and Message ID when the
    request is a C-MOVE's sub-operation (PS3.7 C.4.2.2)."""
    elements = [
        _implicit(0x00000002, _text(sop_class_uid, "UI")),
        _implicit(0x00000100, struct.pack("<H", C_STORE_RQ)),
        _implicit(0x00000110, struct.pack("<H", message_id & 0xFFFF)),
        _implicit(0x00000700, struct.pack("<H", priority)),
        _implicit(0x00000800, struct.pack("<H", DATA_SET_PRESENT)),
        _implicit(0x00001000, _text(sop_instance_uid, "UI")),
    ]
    if originator_aet:
        elements.append(_implicit(0x00001030, _text(originator_aet, "AE")))
    if originator_id is not None:
        elements.append(_implicit(0x00001031, struct.pack("<H", originator_id & 0xFFFF)))
    body = b"".join(encoded for _, encoded in elements)
    return _implicit(0x00000000, struct.pack("<I", len(body)))[1] + body


def identifier(
    values: Iterable[tuple[str, Any]], *, implicit_vr: bool, character_set: str | None = None
) -> bytes:
    """A data set of (keyword, value) pairs, little endian, sorted by tag.

    Values: None (empty), str, int, float, a list of those (multi-valued), or ``[]`` for a
    sequence (returned empty). Text is UTF-8 when ``character_set`` is ``ISO_IR 192``, else
    ASCII (callers choose ISO_IR 192 whenever a value is not ASCII); ``""`` writes an empty
    Specific Character Set, None none.
    """
    codec = "utf-8" if character_set == "ISO_IR 192" else "ascii"
    elements = []
    if character_set is not None:
        elements.append(_element(0x00080005, "CS", character_set or None, implicit_vr, codec))
    for keyword, value in values:
        tag, vr = _keyword(keyword)
        elements.append(_element(tag, vr, value, implicit_vr, codec))
    elements.sort(key=lambda element: element[0])
    return b"".join(encoded for _, encoded in elements)


def p_data(context_id: int, command: bytes, data_set: bytes | None, max_pdu: int) -> list[P_DATA]:
    """P-DATA primitives for one message (PS3.8 E.2): command fragments, then data set ones."""
    primitives = []
    for control, payload in ((0x01, command), (0x00, data_set)):
        if payload is None:
            continue
        size = len(payload) if max_pdu == 0 else max(max_pdu - 6, 1)
        fragments = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        for number, fragment in enumerate(fragments, start=1):
            header = control | (0x02 if number == len(fragments) else 0x00)
            primitive = P_DATA()
            primitive.presentation_data_value_list.append(
                (context_id, bytes([header]) + fragment)
            )
            primitives.append(primitive)
    return primitives


def pdu(context_id: int, value: bytes) -> bytes:
    """One P-DATA-TF PDU of one PDV (``value``: its message control header, then the
    fragment; PS3.8 9.3.5, E.2)."""
    return _PDU.pack(0x04, len(value) + 5) + _PDV.pack(len(value) + 1, context_id) + value


def pdus(context_id: int, command: bytes, data_set: bytes | None, max_pdu: int) -> bytes:
    """The fragments of :func:`p_data` as encoded P-DATA-TF PDUs (PS3.8 9.3.5), one PDV each,
    for writing to the socket as they are."""
    encoded = []
    for primitive in p_data(context_id, command, data_set, max_pdu):
        for pdv_context, value in primitive.presentation_data_value_list:
            encoded.append(pdu(pdv_context, value))
    return b"".join(encoded)


_PDV = struct.Struct(">LB")  # item length (context ID, control header and fragment), context ID
_PDU = struct.Struct(">BxL")  # PDU type, reserved, length


@cache
def _keyword(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    vr = str(dictionary_VR(tag)).split(" or ")[0]
    return int(tag), vr


def _element(tag: int, vr: str, value: Any, implicit_vr: bool, codec: str) -> tuple[int, bytes]:
    encoded = _value(vr, value, codec)
    if implicit_vr:
        return _implicit(tag, encoded)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return tag, head + struct.pack("<HI", 0, len(encoded)) + encoded
    return tag, head + struct.pack("<H", len(encoded)) + encoded


def _implicit(tag: int, encoded: bytes) -> tuple[int, bytes]:
    return tag, struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(encoded)) + encoded


def _value(vr: str, value: Any, codec: str) -> bytes:
    if value is None or (isinstance(value, list) and not value):
        return b""
    if vr == "SQ":
        return b""  # only empty sequences are returned
    values = value if isinstance(value, list | tuple) else [value]
    if vr in _BINARY_US:
        return b"".join(struct.pack("<H" if vr == "US" else "<h", int(v)) for v in values)
    if vr == "UL":
        return b"".join(struct.pack("<I", int(v)) for v in values)
    return _text("\\".join(_string(vr, v) for v in values), vr, codec)


def _string(vr: str, value: Any) -> str:
    if vr == "DS" and isinstance(value, float):
        return str(DSfloat(value, auto_format=True))
    if vr == "IS" and isinstance(value, float):
        return str(int(value))
    return str(value)


def _text(text: str, vr: str, codec: str = "ascii") -> bytes:
    data = text.encode(codec, "replace")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data
