"""DICOM JSON (Annex F) from the raw element walk, checked against pydicom's own
``Dataset.to_json_dict`` on the same files, in every little/big endian and deflated encoding,
with nested sequences of defined and undefined length, private and multi-valued elements and
non-ASCII character sets. No server: the walk and the encoder are plain functions."""

from __future__ import annotations

import io
import json
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dicomweb.metadata import BASE_PLACEHOLDER, INLINE_UP_TO, encode_instance, with_base
from pacs.services.element_tree import Element, find, readable, walk
from storage.query import RetrieveItem
from tests.factories.datasets import (
    ct_instance,
    encode,
    multiframe_instance,
    non_ascii_instance,
    sr_instance,
    to_part10_bytes,
)

BULK = "bulk"


def _rich() -> Dataset:
    """A CT with sequences (nested, defined and undefined length), odd values and privates."""
    ds = ct_instance(InstanceNumber=7)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    inner = Dataset()
    inner.ReferencedSOPClassUID = ds.SOPClassUID
    inner.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    code.ReferencedImageSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([code, Dataset()])
    ds.ReferencedStudySequence = Sequence([])
    ds["AnatomicRegionSequence"].is_undefined_length = False
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.OtherPatientIDs = "A\\B"
    ds.PatientName = "Doe^John^^^=DOE^JOHN"
    ds.FrameIncrementPointer = [0x00181063, 0x00181065]
    ds.add_new(0x00189219, "SS", [-3, 4])  # TagAngleSecondAxis
    ds.add_new(0x0018605A, "FL", [0.5, -2.25])  # TableOfParameterValues
    ds.add_new(0x00189518, "FD", 1.0e-7)  # PrimaryPositionerIncrement
    ds.ImageComments = "line one\\still one"  # LT: a backslash is text
    ds.SliceLocation = "-12.50"
    block = ds.private_block(0x0011, "PACS TESTS", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", b"\x01\x02\x03\x04")
    block.add_new(0x03, "OB", bytes(INLINE_UP_TO + 10))
    return ds


def _item(ds: Dataset) -> RetrieveItem:
    return RetrieveItem(
        sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), blob_key="0" * 64,
        blob_size=0, study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
    )


def _ours(data: bytes, ds: Dataset) -> tuple[dict[str, Any], list[Element]]:
    source = readable(io.BytesIO(data), len(data), str(ds.file_meta.TransferSyntaxUID))
    elements = walk(source, inline_up_to=INLINE_UP_TO)
    encoded = encode_instance(_item(ds), elements)
    obj = json.loads(with_base(encoded, "http://pacs/dicom-web"))
    return obj, elements


def _without_uris(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (BULK if k == "BulkDataURI" else _without_uris(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_uris(v) for v in obj]
    return obj


def _pydicoms(data: bytes) -> dict[str, Any]:
    """pydicom's JSON, with the two places where it reads Annex F differently from us made
    ours: an empty value in a list is ``null`` (F.2.5), an empty sequence has no Value."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return dict(_as_annex_f(ds.to_json_dict(
        bulk_data_threshold=INLINE_UP_TO, bulk_data_element_handler=lambda _element: BULK
    )))


def _as_annex_f(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get("vr") == "SQ" and obj.get("Value") == []:
            return {"vr": "SQ"}
        return {k: _as_annex_f(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [None if v == "" else _as_annex_f(v) for v in obj]
    return obj


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("factory", [_rich, sr_instance, lambda: non_ascii_instance(),
                                     lambda: non_ascii_instance("ISO_IR 100")])
def test_same_json_as_pydicom(syntax: str, factory: Any) -> None:
    ds = encode(factory(), syntax)
    data = to_part10_bytes(ds)
    ours, _ = _ours(data, ds)
    assert ours.pop("00083002") == {"vr": "UI", "Value": [syntax]}
    expected = _pydicoms(data)
    if syntax == ImplicitVRLittleEndian:  # pydicom gives the private creator as UN there
        ours = {k: v for k, v in ours.items() if not k.startswith("0011")}
        expected = {k: v for k, v in expected.items() if not k.startswith("0011")}
    assert _without_uris(ours) == _without_uris(expected)


def test_bulk_data_uris_and_locations() -> None:
    ds = _rich()
    data = to_part10_bytes(ds)
    ours, elements = _ours(data, ds)
    prefix = (f"http://pacs/dicom-web/studies/{ds.StudyInstanceUID}/series/"
              f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulk/")
    assert ours["7FE00010"] == {"vr": "OW", "BulkDataURI": prefix + "7FE00010"}
    assert ours["00111003"] == {"vr": "OB", "BulkDataURI": prefix + "00111003"}
    assert ours["00111002"] == {"vr": "OB", "InlineBinary": "AQIDBA=="}
    located = find(elements, (0x00111003,))
    assert located is not None and located.value is None
    assert data[located.offset:located.end] == bytes(INLINE_UP_TO + 10)
    pixels = find(elements, (0x7FE00010,))
    assert pixels is not None and data[pixels.offset:pixels.end] == ds.PixelData
    nested = find(elements, (0x00082218, 0, 0x00081140, 0, 0x00081155))
    assert nested is not None and nested.value is not None
    assert nested.value.rstrip(b"\x00").decode() == ds.SOPInstanceUID
    assert find(elements, (0x00082218, 5, 0x00080100)) is None


def test_encapsulated_pixel_data_is_skipped_and_located() -> None:
    ds = encode(multiframe_instance(3), RLELossless)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 4)  # Data Set Trailing Padding after Pixel Data
    data = to_part10_bytes(ds)
    ours, elements = _ours(data, ds)
    assert "BulkDataURI" in ours["7FE00010"]
    assert "FFFCFFFC" not in ours
    pixels = find(elements, (0x7FE00010,))
    assert pixels is not None and pixels.length == 0xFFFFFFFF
    assert elements[-1].tag == 0xFFFCFFFC
    assert BASE_PLACEHOLDER not in json.dumps(ours)
