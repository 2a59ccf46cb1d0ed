"""Transcoding for sending: real codecs (pylibjpeg, pyjpegls), datasets from the factories."""

from __future__ import annotations

import copy
import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import read_dataset
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pacs.services.errors import CannotTranscode, PacsError
from pacs.services.transcode import (
    UNCOMPRESSED,
    choose_transfer_syntax,
    dataset_offset,
    encode_for,
    transcode,
)
from tests.factories import datasets as f

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "PACS TRANSCODE TEST"
FLOATS = struct.pack("<3f", 1.5, -2.25, 3.0)

LOSSLESS = {
    "j2k-lossless": JPEG2000Lossless,
    "rle": RLELossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "jpeg-lossless-p14": JPEGLossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
    "deflated": DeflatedExplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "implicit-le": ImplicitVRLittleEndian,
}


def _with_private(ds: Dataset) -> Dataset:
    """A private block (text and a float word value) and a sequence, to see they survive."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "KEEP ME")
    block.add_new(0x02, "OF", FLOATS)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    ds.AnatomicRegionSequence = [item]
    return ds


def _part10(ds: Dataset, transfer_syntax: str) -> bytes:
    return f.to_part10_bytes(f.encode(ds, transfer_syntax))


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _private_text(ds: Dataset) -> str:
    value = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x01].value
    # read from Implicit VR, a private element's VR is unknown: it comes back as UN bytes
    return value.decode().rstrip() if isinstance(value, bytes) else str(value)


def _assert_same_instance(out: Dataset, original: Dataset, target: str) -> None:
    assert out.file_meta.TransferSyntaxUID == target
    assert out.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
    assert out.SOPInstanceUID == original.SOPInstanceUID
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "ImagePositionPatient",
        "RescaleIntercept",
        "WindowCenter",
        "Rows",
        "Columns",
        "BitsStored",
        "PixelRepresentation",
    ):
        if keyword in original:
            assert out[keyword].value == original[keyword].value, keyword
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert _private_text(out) == "KEEP ME"


# ------------------------------------------------------------------------------ lossless


@pytest.mark.parametrize("transfer_syntax", LOSSLESS.values(), ids=LOSSLESS.keys())
def test_lossless_source_decodes_to_the_original_pixels(transfer_syntax: UID) -> None:
    original = _with_private(f.ct_instance(PatientID="PAT-TC-1"))
    source = _part10(original, transfer_syntax)
    assert _read(source).file_meta.TransferSyntaxUID == transfer_syntax

    out = _read(transcode(source, ExplicitVRLittleEndian))

    _assert_same_instance(out, original, ExplicitVRLittleEndian)
    assert out.PhotometricInterpretation == "MONOCHROME2"
    assert "ExtendedOffsetTable" not in out
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)
    assert len(out.PixelData) == 64 * 64 * 2


@pytest.mark.parametrize(
    "transfer_syntax",
    [JPEG2000Lossless, RLELossless, JPEGLSLossless, JPEGLosslessSV1],
    ids=["j2k-lossless", "rle", "jpeg-ls-lossless", "jpeg-lossless-sv1"],
)
def test_lossless_rgb_comes_back_as_rgb_pixel_interleaved(transfer_syntax: UID) -> None:
    original = _with_private(f.us_instance(PatientID="PAT-TC-RGB"))
    source = _part10(original, transfer_syntax)

    out = _read(transcode(source, ExplicitVRLittleEndian))

    _assert_same_instance(out, original, ExplicitVRLittleEndian)
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", 0)
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


def test_jpeg_2000_with_reversible_colour_transform_becomes_rgb() -> None:
    """YBR_RCT (PS3.5 8.2.4): the decoder undoes the component transform, so RGB it is."""
    original = _with_private(f.us_instance(PatientID="PAT-TC-RCT"))
    stored = copy.deepcopy(original)
    stored.PhotometricInterpretation = "YBR_RCT"
    stored.compress(
        JPEG2000Lossless,
        original.pixel_array,
        photometric_interpretation="YBR_RCT",
        use_mct=True,
        generate_instance_uid=False,
    )

    out = _read(transcode(f.to_part10_bytes(stored), ExplicitVRLittleEndian))

    _assert_same_instance(out, original, ExplicitVRLittleEndian)
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", 0)
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


@pytest.mark.parametrize(
    "transfer_syntax",
    [RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1],
    ids=["rle", "j2k-lossless", "jpeg-ls-lossless", "jpeg-lossless-sv1"],
)
def test_multiframe_keeps_every_frame(transfer_syntax: UID) -> None:
    original = _with_private(f.multiframe_instance(frames=3, PatientID="PAT-TC-MF"))
    source = _part10(original, transfer_syntax)
    assert len(list(generate_frames(_read(source).PixelData, number_of_frames=3))) == 3

    out = _read(transcode(source, ExplicitVRLittleEndian))

    _assert_same_instance(out, original, ExplicitVRLittleEndian)
    assert out.NumberOfFrames == 3
    assert out.pixel_array.shape == (3, 32, 32)
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


@pytest.mark.parametrize("target", UNCOMPRESSED, ids=["explicit-le", "implicit-le", "explicit-be"])
def test_every_uncompressed_target_holds_the_same_pixels(target: str) -> None:
    original = _with_private(f.ct_instance(PatientID="PAT-TC-TARGETS"))
    source = _part10(original, JPEG2000Lossless)

    out = _read(transcode(source, target))

    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert _private_text(out) == "KEEP ME"
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


def test_big_endian_swaps_word_values_and_back() -> None:
    """OW Pixel Data and a private OF value change byte order; a round trip restores them."""
    original = _with_private(f.ct_instance(PatientID="PAT-TC-BE"))
    source = _part10(original, RLELossless)

    big = transcode(source, ExplicitVRBigEndian)
    back = _read(transcode(big, ExplicitVRLittleEndian))

    big_ds = _read(big)
    floats = big_ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x02].value
    assert struct.unpack(">3f", floats) == (1.5, -2.25, 3.0)
    np.testing.assert_array_equal(big_ds.pixel_array, original.pixel_array)
    assert back.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x02].value == FLOATS
    assert back.PixelData == original.PixelData


# --------------------------------------------------------------------------------- lossy


def test_jpeg_baseline_rgb_becomes_rgb_with_the_decoded_values() -> None:
    original = _with_private(f.us_instance(PatientID="PAT-TC-JPEG"))
    source = _part10(original, JPEGBaseline8Bit)
    stored = _read(source)
    assert stored.PhotometricInterpretation == "YBR_FULL"

    out = _read(transcode(source, ExplicitVRLittleEndian))

    _assert_same_instance(out, original, ExplicitVRLittleEndian)
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", 0)
    assert out.LossyImageCompression == "01"
    np.testing.assert_array_equal(out.pixel_array, stored.pixel_array)
    # lossy, but close to what was compressed: the colour conversion was undone
    error = np.abs(out.pixel_array.astype(int) - original.pixel_array.astype(int))
    assert error.mean() < 4


@pytest.mark.parametrize(
    ("name", "stored_photometric", "photometric"),
    [
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "YBR_FULL_422", "RGB"),  # DCMTK, 4:2:2 subsampled
        ("JPGExtended.dcm", "MONOCHROME2", "MONOCHROME2"),  # JPEG extended, 12 bits
    ],
)
def test_jpeg_from_other_encoders_gives_the_decoded_values(
    name: str, stored_photometric: str, photometric: str
) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    source = Path(str(path)).read_bytes()
    stored = _read(source)
    assert stored.PhotometricInterpretation == stored_photometric

    out = _read(transcode(source, ExplicitVRLittleEndian))

    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == photometric
    assert out.SOPInstanceUID == stored.SOPInstanceUID
    assert out.LossyImageCompression == "01"
    samples = int(out.SamplesPerPixel)
    if samples > 1:
        assert out.PlanarConfiguration == 0
    assert len(out.PixelData) == out.Rows * out.Columns * samples * out.BitsAllocated // 8
    np.testing.assert_array_equal(out.pixel_array, stored.pixel_array)


def test_lossy_jpeg_2000_gives_the_decoded_values() -> None:
    original = _with_private(f.ct_instance(PatientID="PAT-TC-J2K"))
    source = _part10(original, JPEG2000)
    stored = _read(source)
    assert not np.array_equal(stored.pixel_array, original.pixel_array)  # really lossy

    out = _read(transcode(source, ExplicitVRLittleEndian))

    _assert_same_instance(out, original, ExplicitVRLittleEndian)
    assert out.LossyImageCompression == "01"
    np.testing.assert_array_equal(out.pixel_array, stored.pixel_array)


def test_htj2k_needs_an_encoder_this_machine_lacks() -> None:
    reason = f.encoding_unavailable_reason(HTJ2KLossless)
    if reason is not None:
        pytest.skip(reason)
    original = f.ct_instance(PatientID="PAT-TC-HTJ2K")
    out = _read(transcode(_part10(original, HTJ2KLossless), ExplicitVRLittleEndian))
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


# ----------------------------------------------------------------------------- refusals


def _with_fragment(data: bytes, fragment: bytes) -> bytes:
    ds = _read(data)
    ds.PixelData = encapsulate([fragment])
    return f.to_part10_bytes(ds)


# JPEG 2000 and JPEG lossless: GDCM ends the process on these (pacs.services.codecs)
@pytest.mark.parametrize("transfer_syntax",
                         [JPEG2000Lossless, RLELossless, JPEGLSLossless, JPEGLosslessSV1])
def test_corrupt_codestream_is_cannot_transcode(transfer_syntax: UID) -> None:
    original = f.ct_instance(PatientID="PAT-TC-CORRUPT")
    source = _part10(original, transfer_syntax)
    fragment = next(generate_frames(_read(source).PixelData, number_of_frames=1))
    noise = fragment[:20] + bytes((i * 37 + 11) % 256 for i in range(len(fragment) - 20))

    with pytest.raises(CannotTranscode) as caught:
        transcode(_with_fragment(source, noise), ExplicitVRLittleEndian)

    assert original.SOPInstanceUID in str(caught.value)
    assert "decode" in str(caught.value)


def test_no_decoder_is_cannot_transcode() -> None:
    ds = f.ct_instance(PatientID="PAT-TC-MPEG")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML

    with pytest.raises(CannotTranscode, match="no decoder") as caught:
        transcode(f.to_part10_bytes(ds), ExplicitVRLittleEndian)

    assert ds.SOPInstanceUID in str(caught.value)


@pytest.mark.parametrize(
    "target", [JPEG2000Lossless, JPEGBaseline8Bit, DeflatedExplicitVRLittleEndian]
)
def test_compressing_is_cannot_transcode(target: UID) -> None:
    original = f.ct_instance(PatientID="PAT-TC-TARGET")

    with pytest.raises(CannotTranscode, match="only decoding") as caught:
        transcode(_part10(original, ExplicitVRLittleEndian), target)

    assert original.SOPInstanceUID in str(caught.value)


@pytest.mark.parametrize("data", [f.not_dicom_bytes(), f.corrupt_bytes(), b""])
def test_unreadable_input_is_cannot_transcode(data: bytes) -> None:
    with pytest.raises(PacsError) as caught:
        transcode(data, ExplicitVRLittleEndian)

    assert type(caught.value) is CannotTranscode


def test_a_file_already_in_the_target_is_returned_unchanged() -> None:
    source = _part10(f.ct_instance(PatientID="PAT-TC-SAME"), JPEG2000Lossless)

    assert transcode(source, JPEG2000Lossless) == source
    assert transcode(io.BytesIO(source), ExplicitVRLittleEndian) == transcode(
        source, ExplicitVRLittleEndian
    )


# -------------------------------------------------------------------- choosing a syntax


@pytest.mark.parametrize(
    ("stored", "accepted", "chosen"),
    [
        (JPEG2000Lossless, [ImplicitVRLittleEndian, JPEG2000Lossless], JPEG2000Lossless),
        (
            JPEG2000Lossless,
            [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
            ExplicitVRLittleEndian,
        ),
        (JPEGBaseline8Bit, [ImplicitVRLittleEndian], ImplicitVRLittleEndian),
        (DeflatedExplicitVRLittleEndian, [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
        (
            DeflatedExplicitVRLittleEndian,
            [DeflatedExplicitVRLittleEndian],
            DeflatedExplicitVRLittleEndian,
        ),
        (ExplicitVRBigEndian, [ExplicitVRBigEndian, ExplicitVRLittleEndian], ExplicitVRBigEndian),
        (ImplicitVRLittleEndian, [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
        (RLELossless, [ExplicitVRBigEndian], ExplicitVRBigEndian),
        (RLELossless, [JPEG2000Lossless, JPEGLSLossless], None),
        (RLELossless, [], None),
    ],
)
def test_choose_transfer_syntax(stored: str, accepted: list[str], chosen: str | None) -> None:
    assert choose_transfer_syntax(stored, accepted) == chosen


def test_uncompressed_prefers_explicit_little_endian() -> None:
    assert UNCOMPRESSED == (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


# ----------------------------------------------------------------------- data set bytes


def _group_length_offset(data: bytes) -> int:
    """Where the data set starts by the File Meta Information Group Length (PS3.10 7.1)."""
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    return 144 + int.from_bytes(data[140:144], "little")


@pytest.mark.parametrize(
    "transfer_syntax",
    [JPEG2000Lossless, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian],
)
def test_encode_for_the_stored_syntax_is_the_stored_bytes(transfer_syntax: UID) -> None:
    source = _part10(f.ct_instance(PatientID="PAT-TC-SLICE"), transfer_syntax)

    sent = encode_for(source, transfer_syntax, transfer_syntax)

    assert dataset_offset(source) == _group_length_offset(source)
    assert sent == source[_group_length_offset(source) :]


def test_encode_for_the_stored_syntax_does_not_decode() -> None:
    source = _part10(f.ct_instance(PatientID="PAT-TC-NODECODE"), JPEG2000Lossless)
    fragment = next(generate_frames(_read(source).PixelData, number_of_frames=1))
    broken = _with_fragment(source, b"\x00" * len(fragment))

    assert (
        encode_for(broken, JPEG2000Lossless, JPEG2000Lossless) == broken[dataset_offset(broken) :]
    )
    with pytest.raises(CannotTranscode):
        encode_for(broken, JPEG2000Lossless, ExplicitVRLittleEndian)


@pytest.mark.parametrize("target", UNCOMPRESSED, ids=["explicit-le", "implicit-le", "explicit-be"])
def test_encode_for_another_syntax_is_the_decoded_data_set(target: str) -> None:
    original = _with_private(f.ct_instance(PatientID="PAT-TC-DATASET"))
    source = _part10(original, RLELossless)

    sent = encode_for(source, RLELossless, target)

    assert not sent.startswith(b"\x00" * 128)
    ds = read_dataset(
        io.BytesIO(sent),
        is_implicit_VR=UID(target).is_implicit_VR,
        is_little_endian=UID(target).is_little_endian,
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = target
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert _private_text(ds) == "KEEP ME"
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)


def test_dataset_offset_without_a_group_length() -> None:
    source = _part10(f.ct_instance(PatientID="PAT-TC-NOGL"), ExplicitVRLittleEndian)
    without = source[:132] + source[144:]  # drop (0002,0000) UL, 12 bytes

    assert dataset_offset(without) == _group_length_offset(source) - 12
    assert (
        encode_for(without, ExplicitVRLittleEndian, ExplicitVRLittleEndian)
        == source[_group_length_offset(source) :]
    )


def test_dataset_offset_of_a_file_without_prefix_is_cannot_transcode() -> None:
    with pytest.raises(CannotTranscode, match="not a DICOM Part 10 file"):
        dataset_offset(f.not_dicom_bytes())
