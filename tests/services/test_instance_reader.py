"""The fast element walk reads what pydicom reads, and refuses what is cut short."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs.services.errors import InvalidInstance
from pacs.services.instance_reader import _read_fast, _read_with_pydicom, read_header
from storage.attributes import extract, extract_converted, request_attributes
from tests.factories import datasets as f
from tests.factories.corpus import generate

PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "JPEG2000.dcm", "emri_small.dcm", "SC_rgb_rle.dcm", "rtplan.dcm",
                 "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
                 "chr_arab.dcm", "chr_japanese.dcm", "chr_h31.dcm"]


def _samples(tmp_path: Path) -> list[tuple[str, bytes]]:
    samples = []
    for name in PYDICOM_FILES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            samples.append((name, Path(path).read_bytes()))
    generate(str(tmp_path / "c"), patients=2, studies=1, series=4, instances=2, seed=5,
             compress_fraction=1.0, codecs=["rle", "deflate", "j2k-lossless", "jls-lossless"],
             quiet=True)
    samples += [(str(p), p.read_bytes()) for p in sorted((tmp_path / "c").rglob("*.dcm"))]
    for ds in (f.non_ascii_instance("ISO_IR 100"), f.non_ascii_instance("ISO_IR 192"),
               f.sr_instance(), f.pdf_instance(), f.multiframe_instance(frames=3),
               f.encode(f.ct_instance(), pydicom.uid.ImplicitVRLittleEndian),
               f.encode(f.ct_instance(), pydicom.uid.ExplicitVRBigEndian)):
        samples.append((str(ds.SOPClassUID), f.to_part10_bytes(ds)))
    return samples


def _needs_uids(data: bytes) -> bool:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return all(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                                 "SeriesInstanceUID"))


def test_fast_path_extracts_what_pydicom_extracts(tmp_path: Path) -> None:
    compared = 0
    for name, data in _samples(tmp_path):
        if not _needs_uids(data):
            continue
        slow = _read_with_pydicom(io.BytesIO(data), len(data))
        fast = _read_fast(memoryview(data))
        if fast is None:  # big endian, deflated: pydicom's job
            continue
        compared += 1
        assert fast.transfer_syntax_uid == slow.transfer_syntax_uid, name
        assert extract(fast.dataset) == extract(slow.dataset), name
        assert extract(fast.dataset) == extract_converted(slow.dataset), name
        assert fast.elements is not None
        assert extract(fast.dataset, fast.elements) == extract_converted(slow.dataset), name
        assert (fast.sop_class_uid, fast.sop_instance_uid, fast.study_instance_uid,
                fast.series_instance_uid) == (slow.sop_class_uid, slow.sop_instance_uid,
                                              slow.study_instance_uid, slow.series_instance_uid)
        assert request_attributes(fast.dataset) == request_attributes(slow.dataset), name
    assert compared >= 15


@pytest.mark.parametrize("fraction", [0.999, 0.9, 0.5, 0.1])
def test_cut_files_are_refused(fraction: float, tmp_path: Path) -> None:
    for name, data in _samples(tmp_path):
        if not _needs_uids(data):
            continue
        cut = int(len(data) * fraction)
        if cut <= 132 or (name == "image_dfl.dcm" and fraction > 0.99):
            continue  # image_dfl.dcm ends with 8 bytes after its complete deflate stream
        with pytest.raises(InvalidInstance):
            read_header(io.BytesIO(data[:cut]), cut)
            pytest.fail(f"{name} cut at {cut} of {len(data)} was accepted")


def test_undefined_length_sequences_are_walked_and_read(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = f.ct_instance(PatientID="SEQ-1")
    item = Dataset()
    item.RequestedProcedureID = "RP-7"
    item.ScheduledProcedureStepID = "SPS-9"
    nested = Dataset()
    nested.CodeValue = "X"
    item.ReferencedStudySequence = Sequence([nested])
    ds.RequestAttributesSequence = Sequence([item])
    ds["RequestAttributesSequence"].is_undefined_length = True
    for sequence_item in ds.RequestAttributesSequence:
        sequence_item.is_undefined_length_sequence_item = True
    item["ReferencedStudySequence"].is_undefined_length = True
    data = f.to_part10_bytes(ds)
    assert b"\xfe\xff\xdd\xe0" in data  # a Sequence Delimitation Item was written

    header = _read_fast(memoryview(data))

    assert header is not None
    assert request_attributes(header.dataset) == [
        {"requested_procedure_id": "RP-7", "scheduled_procedure_step_id": "SPS-9"}
    ]
    delimiter = data.index(b"\xfe\xff\xdd\xe0")
    with pytest.raises(InvalidInstance):
        read_header(io.BytesIO(data[:delimiter]), delimiter)
