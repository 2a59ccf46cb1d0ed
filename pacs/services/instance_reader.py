"""Read what ingest needs from a Part 10 file: the header, checked complete, never the pixels.

Little endian data in memory (nearly everything received) goes through
:mod:`pacs.services.element_walk`: tags and lengths only, the indexed elements kept raw for
pydicom to decode. Anything else (big endian, deflated, a large file, an odd encoding) is parsed
by pydicom with large values deferred; pydicom accepts a truncated last value silently, so we
then check that every top-level value lies inside the file. A deflated data set (PS3.5 A.5) is
inflated in steps and refused (:class:`InflatesTooLarge`) as soon as it grows beyond the
decoding limit, before pydicom (which inflates whole) sees it.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import _read_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import RE_VALID_UID, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.services import element_walk
from pacs.services.decoding_limits import DecodeLimits
from pacs.services.errors import InflatesTooLarge, InvalidInstance, MissingAttribute, NotDicom
from storage.attributes import INDEXED_TAGS, Level, extract, request_attributes

_UNDEFINED = 0xFFFFFFFF
_DEFER = 2048  # bytes: values larger than this are skipped, not read
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_REQUIRED_UID_TAGS = (
    ("SOPClassUID", 0x00080016), ("SOPInstanceUID", 0x00080018),
    ("StudyInstanceUID", 0x0020000D), ("SeriesInstanceUID", 0x0020000E),
)
_VALID_UID = re.compile(RE_VALID_UID)
_TRANSFER_SYNTAX = 0x00020010
_SPECIFIC_CHARACTER_SET = 0x00080005
WANTED_TAGS = frozenset({_SPECIFIC_CHARACTER_SET, *INDEXED_TAGS})

# What pydicom raises for bytes it cannot parse or convert: besides the built-in kinds, its own
# for a value of the wrong length, NotImplementedError for a VR it does not know, and
# struct.error for a header cut short (found by tests/services/test_header_properties.py).
PYDICOM_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, KeyError, IndexError, OverflowError, EOFError,
    BytesLengthException, NotImplementedError, struct.error,
)


@dataclass(frozen=True)
class Header:
    dataset: Dataset
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    elements: Mapping[Any, object] | None = None  # the dataset's elements by tag, if read here


def read_header(source: BinaryIO, size: int, limits: DecodeLimits | None = None) -> Header:
    """Parse and check a Part 10 stream of ``size`` bytes.

    Raises :class:`InvalidInstance` when it is not DICOM, is truncated or corrupt,
    :class:`InflatesTooLarge` when it is deflated and inflates beyond ``limits``, and
    :class:`MissingAttribute` when a required UID is absent or malformed.
    """
    preamble = source.read(132)
    if len(preamble) < 132 or preamble[128:] != b"DICM":
        raise NotDicom("not a DICOM Part 10 file (no DICM prefix after the 128-byte preamble)")
    source.seek(0)
    if isinstance(source, io.BytesIO):
        fast = _read_fast(source.getbuffer(), limits)
        if fast is not None:
            return fast
    if limits is not None and _deflated(source):
        with limits.slot():  # pydicom inflates the data set whole: measured first
            try:
                source.seek(0)
                limits.inflate(_after_meta(source), what="the deflated data set", keep=False,
                               too_large=InflatesTooLarge, corrupt=_corrupt_deflate)
            finally:
                source.seek(0)
            return _read_with_pydicom(source, size)
    return _read_with_pydicom(source, size)


def _deflated(source: BinaryIO) -> bool:
    """Whether the file meta group names a deflated transfer syntax (False when unreadable:
    pydicom's reading then says why)."""
    try:
        source.seek(128 + 4)
        meta = _read_file_meta_info(source)
        return UID(str(meta.get("TransferSyntaxUID", "") or "")).is_deflated
    except (InvalidDicomError, OSError):
        return False
    except PYDICOM_PARSE_ERRORS:
        return False
    finally:
        source.seek(0)


def _after_meta(source: BinaryIO) -> bytes:
    """The bytes after the file meta group (the deflated data set)."""
    source.seek(128 + 4)
    _read_file_meta_info(source)
    return source.read()


def _corrupt_deflate(reason: str) -> InvalidInstance:
    return InvalidInstance(f"deflated dataset: {reason}")


def _read_fast(data: memoryview, limits: DecodeLimits | None = None) -> Header | None:
    """The element walk over little endian data; None when pydicom must do it."""
    meta = _file_meta(data)
    if meta is None:
        return None
    meta_end, transfer_syntax = meta
    implicit = transfer_syntax == ImplicitVRLittleEndian
    ts = UID(transfer_syntax)
    empty = meta_end >= len(data)
    if ts.is_deflated:  # PS3.5 A.5: the data set is deflated Explicit VR Little Endian
        active = limits or DecodeLimits.unlimited()
        with active.slot():  # the inflated copy is held until the walk is done
            body = active.inflate(data[meta_end:], what="the deflated data set",
                                  too_large=InflatesTooLarge, corrupt=_corrupt_deflate)
            return _walk(body, 0, transfer_syntax, empty=empty)
    if not (implicit or ts == ExplicitVRLittleEndian or ts.is_encapsulated):
        return None
    return _walk(data, meta_end, transfer_syntax, empty=empty)


def _walk(
    body: bytes | memoryview, start: int, transfer_syntax: str, *, empty: bool
) -> Header | None:
    implicit = transfer_syntax == ImplicitVRLittleEndian
    try:
        elements = element_walk.walk(body, start, implicit=implicit, wanted=WANTED_TAGS)
    except element_walk.Truncated as exc:
        raise InvalidInstance(f"truncated dataset: {exc}") from exc
    except element_walk.Malformed:
        return None  # let pydicom try: it is lenient with odd encodings
    if not elements and empty:
        raise InvalidInstance("the dataset is empty or unreadable")
    dataset = Dataset(elements)
    dataset.set_original_encoding(implicit, True, None)
    try:
        uids = {keyword: _raw_uid(elements, tag, keyword) or _uid(dataset, keyword)
                for keyword, tag in _REQUIRED_UID_TAGS}
    except PYDICOM_PARSE_ERRORS as exc:
        raise InvalidInstance(f"corrupt dataset: {exc}") from exc
    return _header(dataset, transfer_syntax, uids, elements)


def _file_meta(data: memoryview) -> tuple[int, str] | None:
    """(end of the File Meta Information, Transfer Syntax UID), from its group length."""
    if len(data) < 144 or bytes(data[132:138]) != b"\x02\x00\x00\x00UL":
        return None
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    if meta_end > len(data):
        raise InvalidInstance("truncated File Meta Information")
    try:
        meta = element_walk.walk(data[:meta_end], 144, implicit=False, wanted=(_TRANSFER_SYNTAX,))
    except (element_walk.Truncated, element_walk.Malformed):
        return None
    raw = meta.get(BaseTag(_TRANSFER_SYNTAX))
    if raw is None or not raw.value:
        raise InvalidInstance("File Meta Information has no Transfer Syntax UID")
    transfer_syntax = raw.value.decode("ascii", "replace").strip("\x00 ")
    if not UID(transfer_syntax).is_transfer_syntax:
        raise InvalidInstance(f"unknown transfer syntax {transfer_syntax}")
    return meta_end, transfer_syntax


def _read_with_pydicom(source: BinaryIO, size: int) -> Header:
    try:
        dataset = dcmread(source, defer_size=_DEFER)
        meta = dataset.file_meta
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
        if not transfer_syntax:
            raise InvalidInstance("File Meta Information has no Transfer Syntax UID")
        if not UID(transfer_syntax).is_transfer_syntax:
            raise InvalidInstance(f"unknown transfer syntax {transfer_syntax}")
        if not UID(transfer_syntax).is_deflated:
            _check_complete(dataset, size)
        uids = {keyword: _uid(dataset, keyword) for keyword in _REQUIRED_UIDS}
    except InvalidInstance:
        raise
    except InvalidDicomError as exc:
        raise InvalidInstance(f"not a DICOM Part 10 file: {exc}") from exc
    except (EOFError, zlib.error) as exc:
        raise InvalidInstance(f"truncated dataset: {exc}") from exc
    except PYDICOM_PARSE_ERRORS as exc:
        raise InvalidInstance(f"corrupt dataset: {exc}") from exc
    except OSError as exc:
        raise InvalidInstance(f"corrupt dataset: {exc}") from exc
    return _header(dataset, transfer_syntax, uids)


def index_values(header: Header) -> tuple[dict[Level, dict[str, Any]], list[dict[str, Any]]]:
    """The index's values of an instance (``storage.attributes.extract`` and its Request
    Attributes Sequence rows). Values are converted only now, lazily: one pydicom cannot
    convert (a VR it does not know, a binary value of the wrong length, a broken sequence) is
    :class:`InvalidInstance`, as a corrupt header is, never a crash of the store."""
    try:
        return extract(header.dataset, header.elements), request_attributes(header.dataset)
    except PYDICOM_PARSE_ERRORS as exc:
        raise InvalidInstance(f"corrupt dataset: {exc}") from exc


def _header(
    dataset: Dataset, transfer_syntax: str, uids: dict[str, str],
    elements: Mapping[Any, object] | None = None,
) -> Header:
    return Header(
        dataset=dataset,
        elements=elements,
        transfer_syntax_uid=transfer_syntax,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
    )


def _check_complete(dataset: Dataset, size: int) -> None:
    if len(dataset) == 0:
        raise InvalidInstance("the dataset is empty or unreadable")
    for tag in dataset.keys():
        # get_item keeps raw elements raw (elements() converts some, e.g. Pixel Data)
        element = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == _UNDEFINED:
            continue
        end = element.value_tell + element.length
        read_short = element.value is not None and len(element.value) != element.length
        if end > size or read_short:
            raise InvalidInstance(
                f"truncated dataset: element ({element.tag.group:04X},{element.tag.element:04X})"
                f" needs {element.length} bytes, the data ends first"
            )


def _raw_uid(elements: Mapping[BaseTag, object], tag: int, keyword: str) -> str | None:
    """The UID of ``tag`` straight from its raw bytes (several times cheaper than pydicom's
    conversion); None when the element is not raw bytes (then :func:`_uid` decides)."""
    raw = elements.get(tag)  # type: ignore[call-overload]
    if raw is None:
        raise MissingAttribute(f"{keyword} is missing")
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes):
        return None
    uid = value.decode("ascii", "replace").strip(" \x00")
    if not uid:
        raise MissingAttribute(f"{keyword} is missing")
    if len(uid) > 64 or not _VALID_UID.match(uid):
        raise MissingAttribute(f"{keyword} {uid!r} is not a valid UID")
    return uid


def _uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None or str(value).strip() == "":
        raise MissingAttribute(f"{keyword} is missing")
    uid = UID(str(value).strip().rstrip("\x00"))
    if not uid.is_valid:
        raise MissingAttribute(f"{keyword} {str(value)!r} is not a valid UID")
    return str(uid)
