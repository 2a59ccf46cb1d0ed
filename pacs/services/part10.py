"""A bare data set (no 128-byte preamble and ``DICM``) made a Part 10 file, for STOW-RS.

pydicom's ``dcmwrite`` of a Dataset built in memory (what dicomweb-client sends for one) writes
the data set without the preamble, with or without a file meta group; DIMSE peers send data sets
without one too. Such a part gets a file meta group made from the data set (SOP Class and
Instance UIDs, the transfer syntax named by its own group 0002 or recognised from its first
element); the data set bytes are kept unchanged, as for a C-STORE. Of a deflated data set only
the first MiB is inflated here (the UIDs come first): ingest inflates the rest, bounded.
``pacs import`` wraps bare data sets found on disk the same way.

What does not begin like a data set is :class:`NotDicom`; what begins like one but cannot be
read, or names no SOP Class and Instance, is :class:`InvalidInstance` with the reason.
"""

from __future__ import annotations

import io
import zlib

from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.services.errors import InvalidInstance, MissingAttribute, NotDicom
from pacs.services.instance_reader import PYDICOM_PARSE_ERRORS

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
_INFLATED_PREFIX = 1 << 20  # bytes: the UIDs of a deflated data set are at its start


BARE_DATA_SET_LIMIT = 512 << 20  # bytes: a bare data set is wrapped in memory

# The first tag of a bare data set: elements come in ascending tag order (PS3.5 7.1) and an
# instance has a SOP Class UID (0008,0016), so it opens with the file meta group (0002, always
# little endian) or group 0008 (either byte order).
_DATA_SET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")


def is_part10(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def check_data_set_start(head: bytes) -> None:
    """Raise :class:`NotDicom` unless ``head`` (the first bytes of a file) can begin a bare data
    set; cheap, so that a large file that is not DICOM is never read whole."""
    if len(head) < 8:
        raise NotDicom("not DICOM: too short for a data set")
    if head[:2] not in _DATA_SET_STARTS:
        raise NotDicom("not DICOM: no Part 10 header (no DICM after a 128-byte preamble) and "
                       "no data set either")


def as_part10(data: bytes) -> bytes:
    """``data`` as a Part 10 file (unchanged when it is one already)."""
    if is_part10(data):
        return data
    check_data_set_start(data)
    meta = FileMetaDataset()
    offset = 0
    if data[:2] == b"\x02\x00":  # a file meta group without the preamble
        stream = io.BytesIO(data)
        try:
            meta = _read_file_meta_info(stream)
        except InvalidDicomError as error:
            raise InvalidInstance(f"unreadable file meta group: {error}") from error
        except PYDICOM_PARSE_ERRORS as error:
            raise InvalidInstance(f"unreadable file meta group: {error}") from error
        offset = stream.tell()
    body = data[offset:]
    syntax = str(meta.get("TransferSyntaxUID") or _recognised_syntax(body))
    readable = body
    if syntax == DeflatedExplicitVRLittleEndian:
        try:
            readable = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, _INFLATED_PREFIX)
        except zlib.error as error:
            raise InvalidInstance(f"deflated data set cannot be inflated: {error}") from error
    try:
        dataset = read_dataset(
            io.BytesIO(readable),
            is_implicit_VR=syntax == ImplicitVRLittleEndian,
            is_little_endian=syntax != ExplicitVRBigEndian,
            stop_when=lambda tag, _vr, _length: tag > 0x00080018,
        )
        sop_class = str(dataset.get("SOPClassUID", "") or "")
        sop_instance = str(dataset.get("SOPInstanceUID", "") or "")
    except PYDICOM_PARSE_ERRORS as error:
        raise InvalidInstance(
            f"a data set without a Part 10 header, unreadable: {error}") from error
    if not sop_class or not sop_instance:
        raise MissingAttribute("a data set without a Part 10 header and without SOP Class "
                               "and Instance UIDs")
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = UID(sop_class)
    file_meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    file_meta.TransferSyntaxUID = UID(syntax)
    file_meta.ImplementationClassUID = UID(
        str(meta.get("ImplementationClassUID") or PYDICOM_IMPLEMENTATION_UID))
    if meta.get("SourceApplicationEntityTitle"):
        file_meta.SourceApplicationEntityTitle = meta.SourceApplicationEntityTitle
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, file_meta, enforce_standard=True)
    out.write(body)
    return out.getvalue()


def _recognised_syntax(body: bytes) -> str:
    """Explicit VR little endian when the first element carries a VR, else implicit."""
    if body[4:6] in _VRS:
        group = int.from_bytes(body[:2], "little")
        if group > 0x00FF and int.from_bytes(body[:2], "big") <= 0x00FF:
            return ExplicitVRBigEndian
        return ExplicitVRLittleEndian
    return ImplicitVRLittleEndian
