"""Frames, bulk data values and decoded pixels of a stored instance (WADO-RS frames, bulk
data, rendered; WADO-URI images).

Protocol-neutral. Only the header and the bytes asked for are read: a native frame is read at
its offset, an encapsulated one from its fragments (PS3.5 A.4; the Basic Offset Table is used
when present). A frame is given as stored (compressed bytes unchanged) or decoded to native
little endian pixels; decoding is pydicom's with the installed plugins, one frame at a time,
after the header's geometry was checked against the decoding limit and inside one of the
decoding slots (:mod:`pacs.services.decoding_limits`).

Transfer syntax choice for frames (PS3.18 8.7.3.5.2, 8.7.4): each offer is a media type and an
optional transfer syntax. ``application/octet-stream`` without a transfer syntax means
Explicit VR Little Endian (decoded); with ``*`` or the stored syntax, as stored; an
``image/...`` type (``image/jp2``, ``image/jpeg``, ``image/jls``, ``image/dicom-rle``, ...)
is served only when it is the stored syntax's type (nothing is compressed here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.services.decoding_limits import (
    DecodeLimits,
    Geometry,
    GeometryError,
    check_codestream,
    frame_count,
)
from pacs.services.element_tree import PIXEL_DATA, Element, Readable, Window, find
from pacs.services.errors import CannotTranscode, NotFound
from pacs.services.transcode import UNCOMPRESSED
from pacs.services.wado import AS_STORED, WadoService
from storage.query import RetrieveItem

OCTET_STREAM = "application/octet-stream"
# Native frames are given little endian; Implicit and Explicit VR frames are the same bytes.
_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_CHUNK = 1 << 20

#: PS3.18 Table 8.7.3-5 (and 8.7.4): the media type of frames in each compressed syntax.
MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True)
class Offer:
    """One acceptable representation of frames: a media type and an optional syntax."""

    media_type: str
    transfer_syntax: str | None = None


@dataclass(frozen=True)
class FramePart:
    """One frame to send: its bytes, media type and transfer syntax."""

    data: bytes
    media_type: str
    transfer_syntax: str


@dataclass(frozen=True)
class BulkValue:
    """A located binary value: its bytes as a stream of chunks."""

    size: int
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class DecodedFrame:
    """One frame's pixel values (rows × columns [× samples], as the decoder gives them) and the
    instance's top-level header attributes (for rescale, windowing, photometric)."""

    pixels: np.ndarray[Any, Any]
    header: Dataset
    photometric: str


def frame_choice(stored: str, offers: Sequence[Offer]) -> tuple[str, str] | None:
    """(media type, transfer syntax) of the first offer frames stored in ``stored`` can take."""
    native = stored in UNCOMPRESSED or stored == "1.2.840.10008.1.2.1.99"
    stored_media = OCTET_STREAM if native else MEDIA_TYPES.get(stored)
    for offer in offers:
        wanted = offer.transfer_syntax
        if offer.media_type == OCTET_STREAM:
            if wanted is None or wanted in _LITTLE_ENDIAN:
                return OCTET_STREAM, ExplicitVRLittleEndian
            if wanted in (AS_STORED, stored):
                if native:
                    return OCTET_STREAM, ExplicitVRLittleEndian
                return stored_media or OCTET_STREAM, stored
        elif offer.media_type == stored_media and wanted in (None, AS_STORED, stored):
            return offer.media_type, stored
    return None


class FrameService:
    def __init__(self, *, wado: WadoService, limits: DecodeLimits | None = None) -> None:
        self.wado = wado
        self.limits = limits or wado.retrieve.limits

    def frames(
        self, item: RetrieveItem, numbers: Sequence[int], offers: Sequence[Offer]
    ) -> list[FramePart]:
        """Frames ``numbers`` (1-based) of ``item`` in the first representation of ``offers``
        that fits; :class:`NotFound` for a frame out of range or an instance without pixels,
        :class:`CannotTranscode` when no offer fits."""
        choice = frame_choice(item.transfer_syntax_uid, offers)
        if choice is None:
            raise CannotTranscode(
                f"SOP Instance {item.sop_instance_uid} is stored in "
                f"{item.transfer_syntax_uid}: its frames can be given as stored or as "
                f"uncompressed application/octet-stream only"
            )
        media_type, syntax = choice
        with self._pixels(item) as pixels:
            pixels.check(numbers)
            if not pixels.encapsulated:  # native: the parts are assembled in memory, so
                # ``1,1,1,...`` of a large frame counts like as many decoded frames
                self.limits.check(pixels.geometry(), frames=len(numbers), what=_what(item))
            if syntax == item.transfer_syntax_uid or not pixels.encapsulated:
                return [FramePart(pixels.stored_frame(n), media_type, syntax) for n in numbers]
            self.limits.check(pixels.geometry(), frames=len(numbers), what=_what(item))
            parts = []
            for number in numbers:
                with self.limits.slot():
                    data = _native_bytes(pixels.decoded(number), pixels.header)
                parts.append(FramePart(data, media_type, syntax))
            return parts

    def frame_count(self, item: RetrieveItem) -> int:
        with self._pixels(item) as pixels:
            return pixels.count

    @contextmanager
    def decoded(
        self, item: RetrieveItem, number: int, *, extra_per_sample: int = 0
    ) -> Iterator[DecodedFrame]:
        """Frame ``number`` (1-based) decoded to pixel values, for rendering inside the
        ``with`` block: the decoding slot is held until the block ends, and the caller's
        working copies (``extra_per_sample`` bytes per decoded sample) count against the
        decoding limit with the frame itself."""
        with self._pixels(item) as pixels:
            pixels.check([number])
            self.limits.check(
                pixels.geometry(), frames=1, what=_what(item), extra_per_sample=extra_per_sample
            )
            with self.limits.slot():
                array = pixels.decoded(number)
                photometric = str(pixels.header.get("PhotometricInterpretation", "MONOCHROME2"))
                if photometric.startswith("YBR") and array.ndim == 3:
                    photometric = "RGB"  # pydicom converts YBR to RGB when decoding
                yield DecodedFrame(array, pixels.header, photometric)

    def bulk(self, item: RetrieveItem, path: tuple[int, ...]) -> BulkValue | None:
        """The value at ``path`` (tag, then item index and tag into sequences), streamed;
        None when it is Pixel Data (given as frames). :class:`NotFound` when absent."""
        if path == (PIXEL_DATA,):
            return None
        with self.wado.header(item, inline_up_to=0) as (_, elements):
            element = find(elements, path)
            if element is None or element.vr == "SQ" or element.length == 0xFFFFFFFF:
                raise NotFound(
                    f"SOP Instance {item.sop_instance_uid} has no bulk data value there"
                )
        return BulkValue(element.end - element.offset, self._value_chunks(item, path))

    def _value_chunks(self, item: RetrieveItem, path: tuple[int, ...]) -> Iterator[bytes]:
        with self.wado.header(item, inline_up_to=0) as (source, elements):
            element = find(elements, path)
            if element is None:
                return
            window = Window(source.source, source.size)
            position, end = element.offset, element.end
            while position < end:
                size = min(_CHUNK, end - position)
                yield window.read(position, size)
                position += size

    @contextmanager
    def _pixels(self, item: RetrieveItem) -> Iterator[_Pixels]:
        with self.wado.header(item) as (source, elements):
            pixel_data = next((e for e in elements if e.tag == PIXEL_DATA), None)
            if pixel_data is None:
                raise NotFound(f"SOP Instance {item.sop_instance_uid} has no Pixel Data")
            yield _Pixels(item, source, elements, pixel_data)


class _Pixels:
    """The Pixel Data of one open instance."""

    def __init__(
        self, item: RetrieveItem, source: Readable, elements: list[Element], pixel_data: Element
    ) -> None:
        self.item = item
        self.source = source
        self.element = pixel_data
        self.header = _header_dataset(elements)
        self.encapsulated = pixel_data.length == 0xFFFFFFFF
        self._encapsulated_bytes: bytes | None = None
        self._geometry: Geometry | None = None
        try:
            self.count = frame_count(self.header)
        except GeometryError as error:
            raise self._unusable(error) from error

    def geometry(self) -> Geometry:
        """The header's image geometry; :class:`CannotTranscode` when it is unusable."""
        if self._geometry is None:
            try:
                self._geometry = Geometry.of(self.header)
            except GeometryError as error:
                raise self._unusable(error) from error
        return self._geometry

    def _unusable(self, error: GeometryError) -> CannotTranscode:
        return CannotTranscode(
            f"SOP Instance {self.item.sop_instance_uid}: unusable image geometry: {error}"
        )

    def check(self, numbers: Sequence[int]) -> None:
        for number in numbers:
            if not 1 <= number <= self.count:
                raise NotFound(
                    f"SOP Instance {self.item.sop_instance_uid} has {self.count} frame(s), "
                    f"not a frame {number}"
                )

    def _frame_size(self) -> int:
        geometry = self.geometry()
        return geometry.samples_per_frame * geometry.bits_allocated // 8

    def stored_frame(self, number: int) -> bytes:
        window = Window(self.source.source, self.source.size)
        if self.encapsulated:
            if self._encapsulated_bytes is None:
                self._encapsulated_bytes = window.read(
                    self.element.offset, self.element.end - self.element.offset
                )
            try:
                return bytes(
                    get_frame(self._encapsulated_bytes, number - 1, number_of_frames=self.count)
                )
            except (ValueError, KeyError, IndexError) as error:
                raise CannotTranscode(
                    f"SOP Instance {self.item.sop_instance_uid}: cannot find frame {number} "
                    f"in its fragments: {error}"
                ) from error
        if self.geometry().bits_allocated == 1:
            if self.count != 1:
                raise CannotTranscode(
                    f"SOP Instance {self.item.sop_instance_uid}: single-bit multi-frame pixel "
                    f"data cannot be split into frames here"
                )
            return window.read(self.element.offset, self.element.length)
        size = self._frame_size()
        start = self.element.offset + (number - 1) * size
        if start + size > self.element.end:
            raise CannotTranscode(
                f"SOP Instance {self.item.sop_instance_uid}: Pixel Data is shorter than "
                f"{self.count} frame(s) of {size} bytes"
            )
        return window.read(start, size)

    def decoded(self, number: int) -> np.ndarray[Any, Any]:
        """Frame ``number`` as pydicom decodes it (native data interpreted the same way)."""
        ds = Dataset()
        ds.update(self.header)
        ds.file_meta = FileMetaDataset()
        data = self.stored_frame(number)
        ds.NumberOfFrames = 1
        if self.encapsulated:
            check_codestream(data, self.geometry(), what=_what(self.item))
            ds.file_meta.TransferSyntaxUID = UID(self.item.transfer_syntax_uid)
            ds.PixelData = encapsulate([data])
            ds["PixelData"].VR = "OB"
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = data
            ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
        try:
            array: np.ndarray[Any, Any] = ds.pixel_array
        except Exception as error:  # decoder plugins raise many types on bad data
            reason = " ".join(str(error).split()) or type(error).__name__
            raise CannotTranscode(
                f"SOP Instance {self.item.sop_instance_uid}: cannot decode frame {number}: "
                f"{reason}"
            ) from error
        return array


def _what(item: RetrieveItem) -> str:
    return f"SOP Instance {item.sop_instance_uid}"


def _header_dataset(elements: list[Element]) -> Dataset:
    """A pydicom data set of the top-level values that were read (no sequences, no bulk)."""
    raw: dict[BaseTag, DataElement | RawDataElement] = {
        BaseTag(e.tag): RawDataElement(
            BaseTag(e.tag), e.vr, e.length, e.value, e.offset, False, True, True, False
        )
        for e in elements
        if e.value is not None and e.vr != "SQ" and e.tag != PIXEL_DATA
    }
    return Dataset(raw)


def _native_bytes(array: np.ndarray[Any, Any], header: Dataset) -> bytes:
    """Decoded pixels as native little endian Pixel Data bytes (samples interleaved)."""
    bits = int(header.get("BitsAllocated", 8))
    size = 1 if bits <= 8 else 2 if bits <= 16 else 4
    kind = "i" if int(header.get("PixelRepresentation", 0)) == 1 else "u"
    if array.dtype.kind == "f":
        return array.astype(f"<f{array.dtype.itemsize}").tobytes()
    return np.ascontiguousarray(array.astype(f"<{kind}{size}")).tobytes()
