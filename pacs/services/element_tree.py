"""A data set's elements as a tree of raw values, read from a Part 10 file without its bulk data.

For DICOM JSON metadata (PS3.18 Annex F), bulk data look-ups and frame extraction: tags, VRs,
the raw bytes of small values, and *where* each large value lies (offset and length in the
readable bytes), so that Pixel Data and other large binary values are skipped, not read. The
file is read through a 64 KiB window that jumps over skipped values, so a 500 MB multi-frame
costs a few reads.

Little endian only (PS3.5 7.1: Explicit VR, and Implicit VR with VRs from the data dictionary;
every encapsulated transfer syntax is Explicit VR Little Endian). Big endian and deflated files
are first turned into an Explicit VR Little Endian copy in memory by the caller
(:func:`readable`), so offsets then refer to that copy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.services.decoding_limits import DecodeLimits
from pacs.services.transcode import dataset_offset, transcode

UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# PS3.5 Table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_WINDOW = 1 << 14  # bytes read at a time: most headers fit in one read
_TAG_VR = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_ITEM_HEADER = struct.Struct("<II")


class Unreadable(ValueError):
    """The bytes do not form a data set (truncated, or an item where none can be)."""


@dataclass(slots=True)
class Element:
    """One element: ``value`` holds the raw bytes unless the value was skipped (bulk data,
    a sequence, encapsulated pixel data). ``offset``/``end`` bound the value in the source."""

    tag: int
    vr: str
    length: int  # as encoded; UNDEFINED for sequences and encapsulated Pixel Data
    offset: int
    end: int
    value: bytes | None = None
    items: list[list[Element]] | None = None  # SQ: one element list per item


class Window:
    """Random access to a file (or bytes) through one buffer that is refilled on demand."""

    def __init__(self, source: BinaryIO, size: int) -> None:
        self.source = source
        self.size = size
        self.base = 0
        self.data = b""

    def at(self, position: int, length: int) -> tuple[bytes, int]:
        """The buffer holding ``[position, position + length)`` and the index of ``position``."""
        if position + length > self.size:
            raise Unreadable(f"{length} bytes needed at {position}, the data ends at {self.size}")
        start = position - self.base
        if start < 0 or start + length > len(self.data):
            self.source.seek(position)
            self.data = self.source.read(max(length, _WINDOW))
            self.base = position
            start = 0
        return self.data, start

    def read(self, position: int, length: int) -> bytes:
        data, start = self.at(position, length)
        return data[start : start + length]


@lru_cache(maxsize=4096)
def implicit_vr(tag: int) -> str:
    """The VR of ``tag`` in Implicit VR data (PS3.5 A.1): the dictionary's, else UN; private
    creators are LO, group lengths UL; ambiguous ones take OW or their first (US)."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        return "UL"
    if group % 2 == 1:
        return "LO" if 0x0010 <= element <= 0x00FF else "UN"
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    if vr == "OB or OW":
        return "OW"  # PS3.5 A.1: Pixel Data and the overlays are OW in Implicit VR
    return vr.split(" or ")[0] if " or " in vr else vr


class _Parser:
    def __init__(self, window: Window, *, implicit: bool, inline_up_to: int) -> None:
        self.window = window
        self.implicit = implicit
        self.inline_up_to = inline_up_to

    def elements(self, position: int, end: int, *, in_item: bool) -> tuple[list[Element], int]:
        """Elements from ``position`` to ``end`` (or an item delimiter when ``in_item`` and
        the item has undefined length); returns them and the position after.

        The common case (a short value inside the current buffer) is handled inline: this loop
        runs for every element of every instance of a cold series' metadata.
        """
        window = self.window
        found: list[Element] = []
        append = found.append
        implicit = self.implicit
        inline_up_to = self.inline_up_to
        while position < end:
            data = window.data
            at = position - window.base
            if at < 0 or at + 12 > len(data):
                data, at = window.at(position, 8)
            group, number, vr_bytes = _TAG_VR.unpack_from(data, at)
            tag = group << 16 | number
            if group == 0xFFFE:
                if tag == _ITEM_END and in_item:
                    return found, position + 8
                raise Unreadable(f"unexpected item tag at {position}")
            if implicit:
                vr = implicit_vr(tag)
                (length,) = _U32.unpack_from(data, at + 4)
                value_at = position + 8
            else:
                vr = vr_bytes.decode("ascii", "replace")
                if vr in _LONG_VRS:
                    data, at = window.at(position, 12)
                    (length,) = _U32.unpack_from(data, at + 8)
                    value_at = position + 12
                else:
                    (length,) = _U16.unpack_from(data, at + 6)
                    value_at = position + 8
            after = value_at + length
            if (
                length != UNDEFINED
                and vr != "SQ"
                and tag != PIXEL_DATA
                and (length <= inline_up_to or vr not in BINARY_VRS)
            ):
                start = value_at - window.base
                if after > window.size:
                    raise Unreadable(f"element ({group:04X},{number:04X}) is truncated")
                if start + length <= len(window.data):
                    value = window.data[start : start + length]
                else:
                    value = window.read(value_at, length)
                append(Element(tag, vr, length, value_at, after, value))
                position = after
                continue
            element, position = self._value(tag, vr, length, value_at, implicit)
            append(element)
        if position > end:
            raise Unreadable("an element extends beyond its item")
        return found, position

    def _value(
        self, tag: int, vr: str, length: int, value_at: int, implicit: bool
    ) -> tuple[Element, int]:
        if vr == "SQ" or (length == UNDEFINED and vr == "UN" and tag != PIXEL_DATA):
            # PS3.5 6.2.2: a UN of undefined length is a sequence in Implicit VR Little Endian
            saved = self.implicit
            self.implicit = implicit or vr == "UN"
            try:
                items, after = self._items(value_at, length)
            finally:
                self.implicit = saved
            return Element(tag, "SQ", length, value_at, after, None, items), after
        if length == UNDEFINED:  # encapsulated Pixel Data: fragments up to a delimiter
            after = self._skip_fragments(value_at)
            return Element(tag, vr, length, value_at, after), after
        after = value_at + length
        if after > self.window.size:
            raise Unreadable(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is truncated")
        if (vr in BINARY_VRS and length > self.inline_up_to) or tag == PIXEL_DATA:
            return Element(tag, vr, length, value_at, after), after
        value = self.window.read(value_at, length) if length else b""
        return Element(tag, vr, length, value_at, after, value), after

    def _items(self, position: int, length: int) -> tuple[list[list[Element]], int]:
        end = self.window.size if length == UNDEFINED else position + length
        items: list[list[Element]] = []
        while position < end:
            data, at = self.window.at(position, 8)
            tag, item_length = _ITEM_HEADER.unpack_from(data, at)
            tag = (tag & 0xFFFF) << 16 | tag >> 16  # (group, element) read as one LE word
            position += 8
            if tag == _SEQUENCE_END:
                return items, position
            if tag != _ITEM:
                raise Unreadable(f"expected an item at {position - 8}")
            if item_length == UNDEFINED:
                elements, position = self.elements(position, self.window.size, in_item=True)
            else:
                elements, position = self.elements(
                    position, position + item_length, in_item=False
                )
            items.append(elements)
        if length == UNDEFINED:
            raise Unreadable("a sequence of undefined length has no delimiter")
        return items, position

    def _skip_fragments(self, position: int) -> int:
        while True:
            data, at = self.window.at(position, 8)
            tag, length = _ITEM_HEADER.unpack_from(data, at)
            tag = (tag & 0xFFFF) << 16 | tag >> 16
            position += 8
            if tag == _SEQUENCE_END:
                return position
            if tag != _ITEM or length == UNDEFINED:
                raise Unreadable(f"expected a fragment item at {position - 8}")
            position += length


@dataclass(frozen=True)
class Readable:
    """A stored instance as little endian bytes to walk: the file itself, or a converted copy."""

    source: BinaryIO
    size: int
    start: int  # offset of the data set
    implicit: bool


def readable(
    file: BinaryIO, size: int, transfer_syntax: str, limits: DecodeLimits | None = None
) -> Readable:
    """``file`` (a Part 10 file in ``transfer_syntax``) as little endian data to walk: deflated
    data is inflated (up to the decoding limit: :class:`DecodeTooLarge` beyond it) and big
    endian converted, in memory; the rest is read in place."""
    head = file.read(min(size, _WINDOW))
    if transfer_syntax == ExplicitVRBigEndian:
        file.seek(0)
        converted = transcode(file.read(), ExplicitVRLittleEndian)
        return Readable(BytesIO(converted), len(converted), dataset_offset(converted), False)
    start = dataset_offset(_whole_meta(file, head, size))
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        file.seek(start)
        inflated = (limits or DecodeLimits.unlimited()).inflate(
            file.read(), what="the stored data set",
            corrupt=lambda reason: Unreadable(f"cannot inflate the data set: {reason}"),
        )
        return Readable(BytesIO(inflated), len(inflated), 0, False)
    return Readable(file, size, start, transfer_syntax == ImplicitVRLittleEndian)


def _whole_meta(file: BinaryIO, head: bytes, size: int) -> bytes:
    """Enough of the file to hold the File Meta Information (nearly always in the first read)."""
    if len(head) >= size or len(head) < 144:
        return head
    (group_length,) = _U32.unpack_from(head, 140)
    if 144 + group_length <= len(head):
        return head
    file.seek(0)
    return file.read(min(size, 144 + group_length + 256))


def walk(data: Readable, *, inline_up_to: int) -> list[Element]:
    """The top-level elements of the data set; binary values longer than ``inline_up_to``
    bytes (and Pixel Data always) are located, not read."""
    window = Window(data.source, data.size)
    parser = _Parser(window, implicit=data.implicit, inline_up_to=inline_up_to)
    elements, _ = parser.elements(data.start, data.size, in_item=False)
    return elements


def find(elements: list[Element], path: tuple[int, ...]) -> Element | None:
    """The element at ``path``: tag, then (item index, tag) pairs into sequences."""
    current = elements
    element: Element | None = None
    for depth, step in enumerate(path):
        if depth % 2 == 0:
            element = next((e for e in current if e.tag == step), None)
            if element is None:
                return None
        else:
            if element is None or element.items is None or not 0 <= step < len(element.items):
                return None
            current = element.items[step]
    return element if len(path) % 2 == 1 else None
