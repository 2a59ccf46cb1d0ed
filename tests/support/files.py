"""Reading Part 10 files in tests: the data set bytes after the File Meta Information."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pydicom

DEFLATED = "1.2.840.10008.1.2.1.99"


def dataset_bytes(data: bytes) -> bytes:
    """The encoded data set, without preamble and File Meta (which DIMSE does not carry)."""
    assert data[128:132] == b"DICM", "not a Part 10 file"
    # (0002,0000) UL, explicit VR: tag 4 + VR 2 + length 2 + value 4
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def comparable(data: bytes) -> bytes:
    """Data set bytes, inflated when deflated (a sender may re-deflate at another level)."""
    body = dataset_bytes(data)
    meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True).file_meta
    if str(meta.TransferSyntaxUID) == DEFLATED:
        return zlib.decompress(body, -zlib.MAX_WBITS)
    return body


def sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
