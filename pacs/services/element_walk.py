"""A fast walk over the top-level elements of a little endian data set (PS3.5 7.1, 7.5).

Ingest needs two things from a received file: a few dozen attribute values (the index's) and
the certainty that the file is complete. pydicom parses every element (about 2 µs each) and
accepts a truncated last value without a word; this walk only reads tags and lengths, skips
values and sequences (nested items included) by their lengths, and fails on the first value
that would end beyond the data. The elements asked for come back as pydicom raw elements, so
pydicom still decodes their values (character sets included), lazily.

Explicit VR Little Endian (also the encoding of every encapsulated transfer syntax) and
Implicit VR Little Endian only; callers fall back to pydicom for big endian and deflated data.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, MutableMapping

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# PS3.5 Table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG = struct.Struct("<HH")
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class Truncated(ValueError):
    """A value or an element header extends beyond the end of the data."""


class Malformed(ValueError):
    """The bytes do not follow the encoding (e.g. an item where none can be)."""


def walk(
    data: bytes | memoryview, start: int, *, implicit: bool, wanted: Collection[int]
) -> MutableMapping[BaseTag, DataElement | RawDataElement]:
    """Check every top-level element from ``start`` to the end; return the ``wanted`` ones."""
    found: dict[BaseTag, DataElement | RawDataElement] = {}
    end = len(data)
    position = start
    explicit = _EXPLICIT.unpack_from
    while position < end:
        # the common case inline (an explicit VR element with a 2-byte length): one unpack
        if not implicit and position + 12 <= end:
            group, element, vr, length = explicit(data, position)
            if group == 0xFFFE or vr in _LONG_VRS:
                tag, vr, length, value_at = _header(data, position, end, implicit)
            elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                tag, value_at = group << 16 | element, position + 8
            else:
                raise Malformed(f"no VR at byte {position + 4} (found {vr!r})")
        else:
            tag, vr, length, value_at = _header(data, position, end, implicit)
        if length == _UNDEFINED:
            value_end, after = _skip_undefined(data, value_at, end, implicit)
        else:
            value_end = after = value_at + length
            if value_end > end:
                raise Truncated(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes, "
                    f"{end - value_at} are left"
                )
        if tag in wanted:
            key = BaseTag(tag)
            found[key] = RawDataElement(
                key,
                None if implicit else vr.decode("ascii", "replace"),
                length,
                bytes(data[value_at:value_end]),
                value_at,
                implicit,
                True,
            )
        position = after
    return found


def _header(
    data: bytes | memoryview, position: int, end: int, implicit: bool
) -> tuple[int, bytes, int, int]:
    """(tag, VR, length, where the value starts) of the element at ``position``."""
    if position + 8 > end:
        raise Truncated(f"an element header at byte {position} is cut off")
    group, element = _TAG.unpack_from(data, position)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in either encoding
        return tag, b"", _U32.unpack_from(data, position + 4)[0], position + 8
    vr = bytes(data[position + 4 : position + 6])
    if vr in _LONG_VRS:
        if position + 12 > end:
            raise Truncated(f"an element header at byte {position} is cut off")
        return tag, vr, _U32.unpack_from(data, position + 8)[0], position + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise Malformed(f"no VR at byte {position + 4} (found {vr!r})")
    return tag, vr, _U16.unpack_from(data, position + 6)[0], position + 8


def _skip_undefined(
    data: bytes | memoryview, position: int, end: int, implicit: bool
) -> tuple[int, int]:
    """Skip the items of an undefined-length value (a sequence or encapsulated pixel data)
    up to its Sequence Delimitation Item; returns (value end, position after the delimiter)."""
    while True:
        tag, _vr, length, value_at = _header(data, position, end, implicit=True)
        if tag == _SEQUENCE_END:
            return position, value_at
        if tag != _ITEM:
            raise Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item must be")
        if length == _UNDEFINED:
            position = _skip_item(data, value_at, end, implicit)
        else:
            position = value_at + length
            if position > end:
                raise Truncated(f"an item at byte {value_at - 8} needs {length} bytes")


def _skip_item(data: bytes | memoryview, position: int, end: int, implicit: bool) -> int:
    """Skip the elements of an undefined-length item up to its Item Delimitation Item."""
    while True:
        tag, _vr, length, value_at = _header(data, position, end, implicit)
        if tag == _ITEM_END:
            return value_at
        if length == _UNDEFINED:
            position = _skip_undefined(data, value_at, end, implicit)[1]
        else:
            position = value_at + length
            if position > end:
                raise Truncated(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in an item needs "
                    f"{length} bytes"
                )
