"""Read what ingest needs from a Part 10 file: the header, checked complete, never the pixels.

pydicom is lenient with truncated files (a short last value is silently accepted), so after
parsing with large values deferred we check that every top-level value lies inside the file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pacs.services.errors import InvalidInstance, MissingAttribute, NotDicom

_UNDEFINED = 0xFFFFFFFF
_DEFER = 2048  # bytes: values larger than this are skipped, not read
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class Header:
    dataset: Dataset
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def read_header(source: BinaryIO, size: int) -> Header:
    """Parse and check a Part 10 stream of ``size`` bytes.

    Raises :class:`InvalidInstance` when it is not DICOM, is truncated or corrupt, and
    :class:`MissingAttribute` when a required UID is absent or malformed.
    """
    preamble = source.read(132)
    if len(preamble) < 132 or preamble[128:] != b"DICM":
        raise NotDicom("not a DICOM Part 10 file (no DICM prefix after the 128-byte preamble)")
    source.seek(0)
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
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, OSError) as exc:
        raise InvalidInstance(f"corrupt dataset: {exc}") from exc
    return Header(
        dataset=dataset,
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


def _uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None or str(value).strip() == "":
        raise MissingAttribute(f"{keyword} is missing")
    uid = UID(str(value).strip().rstrip("\x00"))
    if not uid.is_valid:
        raise MissingAttribute(f"{keyword} {str(value)!r} is not a valid UID")
    return str(uid)
