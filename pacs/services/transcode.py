"""Transfer syntax conversion for sending a stored instance (C-MOVE, C-GET, WADO-RS).

Files are kept exactly as received; when a destination did not accept an instance's stored
transfer syntax, the instance is decoded to a native (uncompressed) one it did accept
(PS3.5 8.2, Annex A). :func:`choose_transfer_syntax` picks the syntax, :func:`encode_for` gives
the data set bytes a C-STORE SCU sends, :func:`transcode` the complete Part 10 file.

- The stored transfer syntax, when accepted, is sent unchanged: no decode, no re-encode. A lossy
  image is never decoded and compressed again.
- Only *decoding* is done here: towards Explicit VR Little Endian, Implicit VR Little Endian or
  Explicit VR Big Endian. Compressing is out of scope and raises :class:`CannotTranscode`.
- Decoding is pydicom 3's ``Dataset.decompress()`` with the plugins :mod:`pacs.services.codecs`
  chose (python-gdcm: JPEG baseline/extended/lossless; pylibjpeg-openjpeg: JPEG 2000 and HTJ2K;
  pylibjpeg-rle and pydicom: RLE; pyjpegls: JPEG-LS). It also updates the Image Pixel module the
  way the decoder changed the pixels: YBR_FULL_422 JPEG becomes RGB, Planar Configuration and
  Number of Frames follow the decoded data. Every other element is kept, private ones included.
- Not streamed: the whole instance is in memory while it is converted (a decoded multi-frame
  image is as large as its pixels). Unchanged sends (:func:`encode_for` with the stored syntax)
  do not decode anything. With :class:`DecodeLimits`, the decoded size of the whole Pixel Data
  (and the inflated size of a deflated file) is checked from the header before decoding, and
  the decode holds one of the decoding slots (:mod:`pacs.services.decoding_limits`).
- A decoder that does not notice a damaged codestream (one may fill a truncated JPEG scan)
  yields what it decoded; only the errors a decoder reports can be turned into
  :class:`CannotTranscode`.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from pacs.services.decoding_limits import (
    DecodeLimits,
    Geometry,
    GeometryError,
    check_codestream,
)
from pacs.services.errors import CannotTranscode

#: The native transfer syntaxes this module can produce, in order of preference.
UNCOMPRESSED: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

_PREFIX_END = 132  # 128-byte preamble + "DICM"
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)  # PS3.5 7.1.2: 2 reserved bytes, 32-bit length
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x0003
_TRANSFER_SYNTAX_UID = 0x0010
_PIXEL_DATA = 0x7FE00010
_WORD_SIZE = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}  # bytes: values swapped per word
# PS3.5 A.4: only valid beside encapsulated Pixel Data
_ENCAPSULATION_ONLY = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")
# JPEG processes that are lossy by definition (PS3.5 A.4.1): the only record left once decoded
_LOSSY_METHOD = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1"}


@dataclass(frozen=True)
class _FileMeta:
    end: int  # offset of the data set
    transfer_syntax: UID
    sop_instance_uid: str


def choose_transfer_syntax(stored: str, accepted: Collection[str]) -> str | None:
    """The transfer syntax to send a ``stored`` instance in, given those a peer ``accepted``.

    The stored one when accepted (sent unchanged), else the first accepted of
    :data:`UNCOMPRESSED` (the instance is decoded, a deflated one inflated); None when the peer
    accepted neither, so the instance cannot be sent.
    """
    offered = {str(uid).strip("\x00 ") for uid in accepted}
    if stored in offered:
        return stored
    return next((uid for uid in UNCOMPRESSED if uid in offered), None)


def dataset_offset(source: bytes) -> int:
    """Offset of the data set in a Part 10 file: right after the File Meta Information.

    The group 0002 elements are walked (as pydicom reads them), so a missing or wrong File
    Meta Information Group Length does not matter.
    """
    return _file_meta(source).end


def encode_for(
    source: bytes, stored_ts: str, target_ts: str, limits: DecodeLimits | None = None
) -> bytes:
    """The data set (no preamble, no File Meta Information) to send in ``target_ts``.

    When the file is in ``target_ts`` already, the stored bytes after the file meta, unchanged
    (not decoded); otherwise the data set of :func:`transcode`. The file's own File Meta
    Information decides: a ``stored_ts`` that disagrees with it is not trusted.
    """
    meta = _file_meta(source)
    if stored_ts == target_ts == meta.transfer_syntax:
        return source[meta.end :]
    converted = transcode(source, target_ts, limits)
    return converted[dataset_offset(converted) :]


def transcode(
    source: BinaryIO | bytes, target_transfer_syntax: str, limits: DecodeLimits | None = None
) -> bytes:
    """A complete Part 10 file (preamble, file meta, data set) in ``target_transfer_syntax``.

    ``source`` is the file as stored. The SOP Class and Instance UIDs are kept; the pixel
    values are those a decoder gives for the source (for a lossy source, the decoded values).
    A file already in the target syntax is returned unchanged.

    Raises :class:`CannotTranscode` (and nothing else) when the file cannot be read, its pixel
    data cannot be decoded (no decoder, corrupt codestream, :class:`DecodeTooLarge` over
    ``limits``) or the target is not one of :data:`UNCOMPRESSED`; :class:`DecoderBusy` when
    no decoding slot freed up in time.
    """
    data = source if isinstance(source, bytes) else source.read()
    meta = _file_meta(data)
    target = UID(target_transfer_syntax)
    stored = meta.transfer_syntax
    if target == stored:
        return data
    if target not in UNCOMPRESSED:
        raise CannotTranscode(
            f"SOP Instance {meta.sop_instance_uid}: cannot convert {stored.name} to "
            f"{target.name}: only decoding to an uncompressed transfer syntax is supported"
        )
    if stored.is_deflated and limits is not None:  # pydicom would inflate it whole, unbounded
        limits.inflate(memoryview(data)[meta.end :], what=f"SOP Instance {meta.sop_instance_uid}",
                       corrupt=lambda reason: CannotTranscode(
                           f"SOP Instance {meta.sop_instance_uid}: {reason}"), keep=False)
    with _failures(meta, f"cannot read the stored {stored.name} file"):
        ds = dcmread(BytesIO(data))
    little_endian = stored.is_little_endian
    if stored.is_encapsulated and "PixelData" in ds:
        if limits is None:
            _decode(ds, meta)
        else:
            _check_size(ds, meta, limits)
            with limits.slot():
                _decode(ds, meta)
        little_endian = True  # decompress() gives native pixels in Explicit VR Little Endian
    with _failures(meta, f"cannot encode in {target.name}"):
        if little_endian != target.is_little_endian:
            correct_ambiguous_vr(ds, little_endian)
            _swap_byte_order(ds, from_little_endian=little_endian)
        ds.file_meta.TransferSyntaxUID = target
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _check_size(ds: Dataset, meta: _FileMeta, limits: DecodeLimits) -> None:
    """The whole Pixel Data decoded (every frame) must fit the limit, and no frame's
    codestream may declare more than the header: refused before a decoder allocates."""
    what = f"SOP Instance {meta.sop_instance_uid}"
    try:
        geometry = Geometry.of(ds)
    except GeometryError as error:
        raise CannotTranscode(f"{what}: unusable image geometry: {error}") from error
    limits.check(geometry, frames=geometry.number_of_frames, what=what)
    with _failures(meta, "cannot find its frames"):  # (check_codestream's error passes)
        for frame in generate_frames(ds.PixelData, number_of_frames=geometry.number_of_frames):
            check_codestream(frame, geometry, what=what)


def _decode(ds: Dataset, meta: _FileMeta) -> None:
    """Decompress Pixel Data in place, PS3.5 A.4 (encapsulation) → 8.1.1 (native)."""
    stored = meta.transfer_syntax
    try:
        decoder = get_decoder(stored)
    except NotImplementedError as exc:
        raise CannotTranscode(
            f"SOP Instance {meta.sop_instance_uid}: no decoder exists for {stored.name} pixel data"
        ) from exc
    if not decoder.is_available:
        raise CannotTranscode(
            f"SOP Instance {meta.sop_instance_uid}: no decoder for {stored.name} pixel data is "
            f"installed (missing {', '.join(decoder.missing_dependencies)})"
        )
    with _failures(meta, f"cannot decode the {stored.name} pixel data"):
        ds.decompress(generate_instance_uid=False)
    for keyword in _ENCAPSULATION_ONLY:
        if keyword in ds:
            delattr(ds, keyword)
    method = _LOSSY_METHOD.get(stored)
    if method is not None and "LossyImageCompression" not in ds:  # PS3.3 C.7.6.1.1.5
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = method


def _swap_byte_order(ds: Dataset, *, from_little_endian: bool) -> None:
    """Swap the bytes of word values (OW, OL, OF, OD, OV), here and in sequence items.

    pydicom re-encodes numbers and strings itself but writes these values as they are
    (its ``dcmwrite`` documents this), so the byte order change is ours. Pixel Data words are
    Bits Allocated wide; 8-bit Pixel Data becomes OB. UN values have no known structure and are
    left as they are.
    """
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _swap_byte_order(item, from_little_endian=from_little_endian)
        elif element.tag == _PIXEL_DATA:
            _swap_pixel_data(ds, element, from_little_endian=from_little_endian)
        elif element.VR in _WORD_SIZE and element.value:
            element.value = _swapped(element.value, _WORD_SIZE[element.VR])


def _swap_pixel_data(ds: Dataset, element: DataElement, *, from_little_endian: bool) -> None:
    if not element.value:
        return
    bits_allocated = int(ds.get("BitsAllocated", 8))
    if bits_allocated <= 8:
        # 8-bit data as OW is in 16-bit words: in big endian the bytes of each pair are swapped
        if element.VR == "OW" and not from_little_endian:
            element.value = _swapped(element.value, 2)
        element.VR = "OB"
        return
    word = bits_allocated // 8 if bits_allocated in (16, 32, 64) else 2
    element.value = _swapped(element.value, word)
    element.VR = "OW"


def _swapped(value: bytes, word: int) -> bytes:
    usable = len(value) - len(value) % word
    words = np.frombuffer(value, dtype=f"u{word}", count=usable // word)
    return words.byteswap().tobytes() + value[usable:]


@contextmanager
def _failures(meta: _FileMeta, what: str) -> Iterator[None]:
    """Turn whatever pydicom or a codec plugin raises into one :class:`CannotTranscode`.

    Decoder plugins and pydicom's reader and writer raise a wide range of exception types on
    bad data (RuntimeError, ValueError, struct.error, OSError, ...); the sender needs one.
    """
    try:
        yield
    except CannotTranscode:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CannotTranscode(f"SOP Instance {meta.sop_instance_uid}: {what}: {reason}") from exc


def _file_meta(data: bytes) -> _FileMeta:
    """Walk the File Meta Information (PS3.10 7.1: Explicit VR Little Endian, group 0002)."""
    if len(data) < _PREFIX_END or data[128:_PREFIX_END] != b"DICM":
        raise CannotTranscode("not a DICOM Part 10 file (no DICM prefix after the preamble)")
    values: dict[int, bytes] = {}
    position = _PREFIX_END
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        long_form = data[position + 4 : position + 6] in _LONG_VRS
        start = position + (12 if long_form else 8)
        if start > len(data):
            raise CannotTranscode("the File Meta Information is truncated or corrupt")
        (length,) = struct.unpack_from(
            "<I" if long_form else "<H", data, start - (4 if long_form else 2)
        )
        if start + length > len(data):
            raise CannotTranscode("the File Meta Information is truncated or corrupt")
        values[element] = data[start : start + length]
        position = start + length
    sop_instance_uid = _text(values.get(_MEDIA_STORAGE_SOP_INSTANCE_UID)) or "(unknown)"
    transfer_syntax = _text(values.get(_TRANSFER_SYNTAX_UID))
    if not transfer_syntax:
        raise CannotTranscode(
            f"SOP Instance {sop_instance_uid}: the File Meta Information has no Transfer Syntax UID"
        )
    return _FileMeta(position, UID(transfer_syntax), sop_instance_uid)


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("ascii", "replace").strip("\x00 ")
