"""Small deterministic DICOM datasets for tests.

Every factory returns a fresh pydicom ``Dataset`` (with File Meta Information, Explicit VR
Little Endian) that depends only on its arguments: no clock, no global random state.

Identity is given with DICOM keywords, and any other DICOM keyword can be overridden the same
way (``ct_instance(PatientID="P2", StudyDate="20240301", Modality="PT")``). A keyword set to
``None`` removes the element. UIDs that are not given are derived from the identity, so

    [ct_instance(InstanceNumber=i) for i in range(1, 11)]

is one series of ten instances, and ``ct_instance(PatientID="P2")`` is another patient's study:

    StudyInstanceUID  <- PatientID, StudyDate, StudyID, AccessionNumber
    SeriesInstanceUID <- StudyInstanceUID, Modality, SeriesNumber
    SOPInstanceUID    <- SeriesInstanceUID, InstanceNumber

``Rows``/``Columns`` (and ``frames`` for multi-frame) size the synthetic pixel data; ``seed``
varies the pixel noise without touching any UID.

Encodings: ``encode(ds, uid)`` returns a copy in another transfer syntax. pydicom 3.0 has no
JPEG (10918) encoder and Pillow is not a dependency, so JPEG baseline and JPEG lossless are
encoded by the small pure-numpy encoders at the end of this module (decoded fine by
pylibjpeg-libjpeg and DCMTK). ``encoding_unavailable_reason(uid)`` says why a transfer syntax
cannot be produced here (HTJ2K: pylibjpeg-openjpeg has no HTJ2K encoder), so tests can skip.

Broken inputs for validation tests: ``corrupt_bytes()``, ``truncated_bytes()``,
``not_dicom_bytes()``, ``missing_sop_uid_instance()``, ``invalid_uid_instance()``.
Note that pydicom reads a truncated file *without* an error (the last element is just short),
so a server has to check value lengths itself.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
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
    generate_uid,
)

__all__ = [
    "TRANSFER_SYNTAXES",
    "EncodingUnavailable",
    "corrupt_bytes",
    "cr_instance",
    "ct_instance",
    "encode",
    "encoding_unavailable_reason",
    "invalid_uid_instance",
    "make_uid",
    "minimal_pdf",
    "missing_sop_uid_instance",
    "mr_instance",
    "multiframe_instance",
    "non_ascii_instance",
    "not_dicom_bytes",
    "pdf_instance",
    "sc_instance",
    "sr_instance",
    "to_part10_bytes",
    "truncated_bytes",
    "us_instance",
    "write_part10",
]

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as in tests/factories/corpus.py
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.2")
IMPLEMENTATION_VERSION_NAME = "PACS_TESTS_1"

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MF_GRAYSCALE_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")

#: Transfer syntaxes that ``encode`` knows, by a short name handy for test ids.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-le": ExplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-lossless": JPEGLossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
    "jpeg-ls-lossless": JPEGLSLossless,
    "j2k-lossless": JPEG2000Lossless,
    "j2k": JPEG2000,
    "htj2k-lossless": HTJ2KLossless,
}
_NATIVE = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
_PYDICOM_ENCODED = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEG2000)
_J2K_LOSSY_RATIO = 10

PixelArray = npt.NDArray[Any]


class EncodingUnavailable(RuntimeError):
    """This machine cannot produce the transfer syntax; ``str(exc)`` is the reason."""


def make_uid(*parts: object) -> UID:
    """A valid UID that depends only on `parts` (same parts, same UID)."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts])


# --------------------------------------------------------------------------- common modules


def _base(sop_class: UID, defaults: dict[str, Any], attributes: dict[str, Any]) -> Dataset:
    """Patient/study/series/instance modules; `attributes` win over `defaults`.

    The UIDs are derived after the overrides are known, so that overriding PatientID or
    InstanceNumber alone gives a new study or a new instance, as described in the module doc.
    """
    values = {"StudyID": "1", "SeriesNumber": 1, "InstanceNumber": 1, **defaults, **attributes}
    _check_keywords(values)
    study_uid = values.get("StudyInstanceUID") or make_uid(
        "study",
        values.get("PatientID"),
        values.get("StudyDate"),
        values.get("StudyID"),
        values.get("AccessionNumber"),
    )
    series_uid = values.get("SeriesInstanceUID") or make_uid(
        "series", study_uid, values.get("Modality"), values.get("SeriesNumber")
    )
    sop_uid = make_uid("sop", series_uid, values.get("InstanceNumber"))

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "SpecificCharacterSet" in values:  # first, so that later strings use it
        ds.SpecificCharacterSet = values.pop("SpecificCharacterSet")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.Manufacturer = "PACS-TESTS"
    ds.ContentTime = "101500"
    _apply(ds, values)
    if "ContentDate" not in ds and ds.get("StudyDate"):
        ds.ContentDate = ds.StudyDate
    return ds


def _check_keywords(values: dict[str, Any]) -> None:
    unknown = sorted(k for k in values if tag_for_keyword(k) is None)
    if unknown:
        raise TypeError(f"not DICOM keywords: {', '.join(unknown)}")


def _apply(ds: Dataset, values: dict[str, Any]) -> None:
    """Set each keyword; ``None`` deletes, which is how tests ask for a missing attribute."""
    for keyword, value in values.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


def _finish(ds: Dataset) -> Dataset:
    """Mirror SOP Class/Instance UID into the file meta (Part 10 requires both)."""
    if "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _rng(seed: int, ds: Dataset) -> np.random.Generator:
    """Pixel noise that differs per instance but is fixed for given UIDs and seed."""
    digest = hashlib.sha256(f"{seed}|{ds.get('SOPInstanceUID', '')}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _size(attributes: dict[str, Any], rows: int, columns: int) -> tuple[int, int]:
    return int(attributes.get("Rows") or rows), int(attributes.get("Columns") or columns)


def _grayscale(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> PixelArray:
    """A smooth gradient with a disc and a little noise: compresses like a real image."""
    *frames, rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    top = (1 << bits) - 1
    base = 0.25 * top + 0.35 * top * (x + y) / max(rows + cols - 2, 1)
    disc = ((x - cols / 2) ** 2 + (y - rows / 2) ** 2) <= (min(rows, cols) / 4) ** 2
    base[disc] += 0.3 * top
    noise = rng.normal(0.0, top / 200.0, size=shape)
    img = np.clip(np.broadcast_to(base, shape) + noise, 0, top)
    dtype = np.uint8 if bits <= 8 else np.uint16
    out: PixelArray = img.round().astype(dtype)
    return out


def _set_pixels(ds: Dataset, arr: PixelArray, photometric: str, bits_stored: int) -> None:
    """Image Pixel module for native (uncompressed) little endian pixel data."""
    samples = 3 if photometric == "RGB" else 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    frames = arr.shape[0] if arr.ndim == (4 if samples > 1 else 3) else 1
    if frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-3:-1] if samples > 1 else arr.shape[-2:]
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"


def _number(ds: Dataset) -> int:
    return int(ds.get("InstanceNumber") or 1)


def _image_plane(ds: Dataset, z: float) -> None:
    ds.FrameOfReferenceUID = make_uid("for", ds.StudyInstanceUID)
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0


# ------------------------------------------------------------------------------- factories


def ct_instance(*, seed: int = 0, **attributes: Any) -> Dataset:
    """CT Image Storage, 64x64 (override with Rows/Columns), 12 bits stored, HU via rescale."""
    defaults = {
        "PatientID": "PAT-CT-1",
        "PatientName": "DOE^JOHN",
        "StudyDate": "20240115",
        "AccessionNumber": "ACC-CT-1",
        "Modality": "CT",
        "StudyDescription": "CT CHEST",
        "SeriesDescription": "AXIAL 5MM",
    }
    ds = _base(CT_IMAGE, defaults, attributes)
    rows, cols = _size(attributes, 64, 64)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    _image_plane(ds, -5.0 * _number(ds))
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    _set_pixels(ds, _grayscale(_rng(seed, ds), (rows, cols), 12), "MONOCHROME2", 12)
    _apply(ds, _late(attributes))
    return _finish(ds)


def mr_instance(*, seed: int = 0, **attributes: Any) -> Dataset:
    """MR Image Storage, 64x64, 12 bits stored."""
    defaults = {
        "PatientID": "PAT-MR-1",
        "PatientName": "ROE^JANE",
        "StudyDate": "20240220",
        "AccessionNumber": "ACC-MR-1",
        "Modality": "MR",
        "StudyDescription": "MR BRAIN",
        "SeriesDescription": "T2 AX",
    }
    ds = _base(MR_IMAGE, defaults, attributes)
    rows, cols = _size(attributes, 64, 64)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 4000.0, 90.0, 16
    ds.MagneticFieldStrength, ds.ImagingFrequency = 1.5, 63.87
    _image_plane(ds, 4.0 * _number(ds))
    _set_pixels(ds, _grayscale(_rng(seed, ds), (rows, cols), 12), "MONOCHROME2", 12)
    _apply(ds, _late(attributes))
    return _finish(ds)


def cr_instance(*, seed: int = 0, **attributes: Any) -> Dataset:
    """Computed Radiography Image Storage (chest PA), 64x64, 12 bits stored."""
    defaults = {
        "PatientID": "PAT-CR-1",
        "PatientName": "SMITH^ANNA",
        "StudyDate": "20230905",
        "AccessionNumber": "ACC-CR-1",
        "Modality": "CR",
        "StudyDescription": "XR CHEST PA",
        "SeriesDescription": "PA",
    }
    ds = _base(CR_IMAGE, defaults, attributes)
    rows, cols = _size(attributes, 64, 64)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    _set_pixels(ds, _grayscale(_rng(seed, ds), (rows, cols), 12), "MONOCHROME2", 12)
    _apply(ds, _late(attributes))
    return _finish(ds)


def us_instance(*, seed: int = 0, **attributes: Any) -> Dataset:
    """Ultrasound Image Storage, RGB (SamplesPerPixel 3, 8 bits), 48x64."""
    defaults = {
        "PatientID": "PAT-US-1",
        "PatientName": "NGUYEN^LINH",
        "StudyDate": "20220310",
        "AccessionNumber": "ACC-US-1",
        "Modality": "US",
        "StudyDescription": "US ABDOMEN",
        "SeriesDescription": "LIVER",
    }
    ds = _base(US_IMAGE, defaults, attributes)
    rows, cols = _size(attributes, 48, 64)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    gray = _grayscale(_rng(seed, ds), (rows, cols), 8).astype(np.int16)
    rgb = np.stack([gray, np.roll(gray, cols // 3, axis=1), 255 - gray], axis=-1)
    _set_pixels(ds, rgb.astype(np.uint8), "RGB", 8)
    _apply(ds, _late(attributes))
    return _finish(ds)


def sc_instance(*, seed: int = 0, **attributes: Any) -> Dataset:
    """Secondary Capture Image Storage, 8-bit MONOCHROME2, 64x64."""
    defaults = {
        "PatientID": "PAT-SC-1",
        "PatientName": "TAYLOR^MARK",
        "StudyDate": "20210601",
        "AccessionNumber": "ACC-SC-1",
        "Modality": "OT",
        "StudyDescription": "SCREEN CAPTURE",
        "SeriesDescription": "KEY IMAGES",
    }
    ds = _base(SC_IMAGE, defaults, attributes)
    rows, cols = _size(attributes, 64, 64)
    ds.ConversionType = "WSD"
    _set_pixels(ds, _grayscale(_rng(seed, ds), (rows, cols), 8), "MONOCHROME2", 8)
    _apply(ds, _late(attributes))
    return _finish(ds)


def multiframe_instance(frames: int = 4, *, seed: int = 0, **attributes: Any) -> Dataset:
    """Multi-frame Grayscale Word SC Image Storage: `frames` frames of 32x32, 12 bits stored."""
    if frames < 1:
        raise ValueError("frames must be >= 1")
    defaults = {
        "PatientID": "PAT-MF-1",
        "PatientName": "WILSON^PAUL",
        "StudyDate": "20240402",
        "AccessionNumber": "ACC-MF-1",
        "Modality": "OT",
        "StudyDescription": "MULTIFRAME",
        "SeriesDescription": "CINE",
    }
    ds = _base(MF_GRAYSCALE_WORD_SC, defaults, attributes)
    rows, cols = _size(attributes, 32, 32)
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 40.0
    _set_pixels(ds, _grayscale(_rng(seed, ds), (frames, rows, cols), 12), "MONOCHROME2", 12)
    _apply(ds, _late(attributes))
    return _finish(ds)


def sr_instance(text: str = "No acute findings.", **attributes: Any) -> Dataset:
    """Basic Text SR: a report container with one TEXT finding, no pixel data."""
    defaults = {
        "PatientID": "PAT-CT-1",
        "PatientName": "DOE^JOHN",
        "StudyDate": "20240115",
        "AccessionNumber": "ACC-CT-1",
        "Modality": "SR",
        "SeriesDescription": "REPORT",
        "SeriesNumber": 99,
    }
    ds = _base(BASIC_TEXT_SR, defaults, attributes)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("11528-7", "LN", "Radiology Report")])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = text
    ds.ContentSequence = Sequence([finding])
    _apply(ds, _late(attributes))
    return _finish(ds)


def pdf_instance(pdf: bytes | None = None, **attributes: Any) -> Dataset:
    """Encapsulated PDF Storage; `pdf` defaults to a tiny valid one-page PDF."""
    defaults = {
        "PatientID": "PAT-CT-1",
        "PatientName": "DOE^JOHN",
        "StudyDate": "20240115",
        "AccessionNumber": "ACC-CT-1",
        "Modality": "DOC",
        "SeriesDescription": "SCANNED REQUEST",
        "SeriesNumber": 98,
    }
    ds = _base(ENCAPSULATED_PDF, defaults, attributes)
    document = minimal_pdf() if pdf is None else pdf
    ds.ConversionType = "SD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "REQUEST FORM"
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    _apply(ds, _late(attributes))
    return _finish(ds)


_NON_ASCII_DEFAULTS: dict[str, dict[str, str]] = {
    "ISO_IR 192": {
        "PatientName": "MÜLLER^JÜRGEN",
        "PatientID": "PAT-UTF8-1",
        "StudyDescription": "CT SCHÄDEL NATIV",
        "InstitutionName": "KLINIKUM MÜNCHEN",
    },
    "ISO_IR 100": {
        "PatientName": "GARCÍA^JOSÉ",
        "PatientID": "PAT-LATIN1-1",
        "StudyDescription": "TC CRÁNEO",
        "InstitutionName": "CLÍNICA SAN JOSÉ",
    },
}


def non_ascii_instance(charset: str = "ISO_IR 192", **attributes: Any) -> Dataset:
    """A CT whose name/description need `charset` (UTF-8 "ISO_IR 192" or Latin-1 "ISO_IR 100").

    pydicom encodes the strings with the dataset's SpecificCharacterSet when writing, so the
    ISO_IR 100 file really holds Latin-1 bytes (b"GARC\\xcdA^JOS\\xc9").
    """
    if charset not in _NON_ASCII_DEFAULTS:
        raise ValueError(f"charset must be one of {sorted(_NON_ASCII_DEFAULTS)}")
    values = {**_NON_ASCII_DEFAULTS[charset], **attributes, "SpecificCharacterSet": charset}
    return ct_instance(**values)


def missing_sop_uid_instance(**attributes: Any) -> Dataset:
    """A CT without SOPInstanceUID in the data set.

    The file meta keeps MediaStorageSOPInstanceUID, otherwise it would not be a Part 10 file
    at all; a server must not trust the meta alone.
    """
    ds = ct_instance(**{"PatientID": "PAT-BAD-1", **attributes})
    del ds.SOPInstanceUID
    return ds


def invalid_uid_instance(
    uid: str = "1.2.abc", keyword: str = "SOPInstanceUID", **attributes: Any
) -> Dataset:
    """A CT whose `keyword` (a UI attribute) holds the invalid UID `uid`.

    The value is stored without pydicom's validation (which would warn, and warnings are
    errors in this project's pytest settings); the file meta gets the same value when
    `keyword` is SOPInstanceUID. Deep-copying or re-reading the dataset makes pydicom warn
    again unless wrapped in ``pydicom.config.disable_value_validation()``.
    """
    ds = ct_instance(**{"PatientID": "PAT-BAD-2", **attributes})
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise TypeError(f"not a DICOM keyword: {keyword}")
    ds[tag] = DataElement(tag, "UI", uid, validation_mode=config.IGNORE)
    if keyword == "SOPInstanceUID":
        meta_tag = 0x00020003
        ds.file_meta[meta_tag] = DataElement(meta_tag, "UI", uid, validation_mode=config.IGNORE)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _late(attributes: dict[str, Any]) -> dict[str, Any]:
    """Overrides re-applied after the modality modules, minus the ones that shape pixels."""
    shaping = {"Rows", "Columns", "SpecificCharacterSet"}
    return {k: v for k, v in attributes.items() if k not in shaping}


def minimal_pdf(text: str = "PACS test document") -> bytes:
    """A one-page PDF with correct xref offsets, so PDF readers accept it."""
    stream = f"BT /F1 12 Tf 20 50 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# ------------------------------------------------------------------------- part 10 writing


@contextmanager
def _lenient() -> Iterator[None]:
    """pydicom re-validates UIDs on deepcopy/write; the invalid-UID factory must still write."""
    with config.disable_value_validation():
        yield


def to_part10_bytes(ds: Dataset) -> bytes:
    """`ds` as a DICOM Part 10 file (preamble, "DICM", file meta) in its transfer syntax."""
    buf = BytesIO()
    with _lenient():
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_part10(ds: Dataset, path: str | Path) -> Path:
    """Write `ds` to `path` as Part 10 (parent directories created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(to_part10_bytes(ds))
    return target


def corrupt_bytes() -> bytes:
    """Preamble + "DICM" + a File Meta group length like a real file, then garbage.

    The second meta element claims to be a sequence of undefined length whose item never
    ends, so pydicom's ``dcmread`` raises (OSError) and DCMTK reports a parse error; a merely
    noisy header would not do: pydicom reads most noise as private or UN elements.
    """
    header = b"\0" * 128 + b"DICM"
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + (200).to_bytes(4, "little")
    endless_sequence = b"\x02\x00\x01\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
    noise = bytes((i * 73 + 41) % 256 for i in range(256))
    return header + group_length + endless_sequence + noise


def truncated_bytes(ds: Dataset | None = None, keep: int | None = None) -> bytes:
    """A valid Part 10 file cut short: by default in the middle of the PixelData value.

    With `keep`, the first `keep` bytes are returned instead. pydicom reads such a file without
    raising (PixelData just comes back short); DCMTK reports a premature end of stream.
    """
    full = to_part10_bytes(ct_instance(PatientID="PAT-TRUNC-1") if ds is None else ds)
    if keep is None:
        keep = _middle_of_last_value(full)
    if not 0 < keep < len(full):
        raise ValueError(f"keep must be in 1..{len(full) - 1}")
    return full[:keep]


def _middle_of_last_value(data: bytes) -> int:
    """Offset halfway into PixelData (or the last element) of an Explicit VR LE file."""
    marker = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
    pos = data.rfind(marker)
    if pos < 0:
        return len(data) - max(len(data) // 10, 2)
    value_start = pos + 12  # tag, VR, 2 reserved bytes, 4-byte length
    return value_start + (len(data) - value_start) // 2


def not_dicom_bytes() -> bytes:
    """Plain text of a few hundred bytes: no preamble, no "DICM", not a data set either."""
    return b"This is not a DICOM file.\n" * 16


# ---------------------------------------------------------------------------- encodings


def encoding_unavailable_reason(transfer_syntax_uid: str) -> str | None:
    """Why `encode` cannot produce this transfer syntax here, or None if it can."""
    ts = UID(transfer_syntax_uid)
    if ts in _NATIVE or ts in (JPEGBaseline8Bit, JPEGLossless, JPEGLosslessSV1):
        return None
    if ts in _PYDICOM_ENCODED:
        from pydicom.pixels.encoders.base import get_encoder

        encoder = get_encoder(ts)
        if encoder.is_available:
            return None
        return f"pydicom cannot encode {ts.name}: missing {encoder.missing_dependencies}"
    if ts == HTJ2KLossless:
        return (
            "HTJ2K encoding is not available: pydicom 3.0 has no HTJ2K encoder and "
            f"pylibjpeg-openjpeg {_openjpeg_version()} only decodes HTJ2K"
        )
    return f"encode() does not support {ts} ({ts.name})"


def _openjpeg_version() -> str:
    try:
        from importlib.metadata import version

        return version("pylibjpeg-openjpeg")
    except Exception:
        return "(not installed)"


def encode(ds: Dataset, transfer_syntax_uid: str) -> Dataset:
    """A copy of `ds` in `transfer_syntax_uid`; the SOP Instance UID is kept.

    Raises EncodingUnavailable when this machine cannot produce it (see
    ``encoding_unavailable_reason``) and ValueError when `ds` does not fit the syntax
    (JPEG baseline needs 8-bit unsigned pixels, JPEG 2000 at least 32x32 pixels, compressed
    syntaxes need pixel data).
    """
    ts = UID(transfer_syntax_uid)
    reason = encoding_unavailable_reason(ts)
    if reason is not None:
        raise EncodingUnavailable(reason)
    out = _native_little_endian_copy(ds)
    if ts in _NATIVE:
        out.file_meta.TransferSyntaxUID = ts
        if ts == ExplicitVRBigEndian:
            _swap_pixel_words(out)
        return out
    if "PixelData" not in out:
        raise ValueError(f"{ts.name} needs pixel data; this data set has none")
    if ts in _PYDICOM_ENCODED:
        _compress_with_pydicom(out, ts)
    else:
        _compress_jpeg(out, ts)
    return out


def _native_little_endian_copy(ds: Dataset) -> Dataset:
    """Deep copy with uncompressed Explicit VR LE pixel data, whatever `ds` was in."""
    out = copy.deepcopy(ds)
    ts = out.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    if "PixelData" in out and ts not in _NATIVE:
        out.decompress(generate_instance_uid=False)
    elif "PixelData" in out and ts == ExplicitVRBigEndian:
        _swap_pixel_words(out)
    if "PixelData" in out:  # read back from Implicit VR, 8-bit data may say OW: wrong in BE
        out["PixelData"].VR = "OB" if int(out.BitsAllocated) <= 8 else "OW"
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def _swap_pixel_words(ds: Dataset) -> None:
    """pydicom writes OW values as given, so changing byte order is the caller's job."""
    if "PixelData" not in ds or int(ds.BitsAllocated) <= 8:
        return
    dtype = np.dtype(f"u{int(ds.BitsAllocated) // 8}")
    ds.PixelData = np.frombuffer(ds.PixelData, dtype=dtype).byteswap().tobytes()


def _compress_with_pydicom(ds: Dataset, ts: UID) -> None:
    if ts in (JPEG2000Lossless, JPEG2000) and min(int(ds.Rows), int(ds.Columns)) < 32:
        # pylibjpeg-openjpeg always uses 6 resolutions (5 decompositions): 2**5 pixels minimum
        raise ValueError("JPEG 2000 encoding here needs Rows and Columns >= 32")
    kwargs: dict[str, Any] = {"generate_instance_uid": False}
    if ts == JPEG2000:
        kwargs["j2k_cr"] = [_J2K_LOSSY_RATIO]
    ds.compress(ts, **kwargs)
    if ts == JPEG2000:  # lossy: PS3.3 C.7.6.1.1.5
        _mark_lossy(ds, _J2K_LOSSY_RATIO, "ISO_15444_1")


def _mark_lossy(ds: Dataset, ratio: float, method: str) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.LossyImageCompressionMethod = method


def _frames(ds: Dataset) -> list[PixelArray]:
    """Frames as (rows, cols[, samples]) arrays from native little endian pixel data."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1))
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated)
    dtype = np.dtype(f"<u{bits // 8}")
    flat = np.frombuffer(ds.PixelData, dtype=dtype)[: nframes * rows * cols * samples]
    if samples > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        planar = flat.reshape(nframes, samples, rows, cols)
        return list(np.moveaxis(planar, 1, -1))
    shape = (nframes, rows, cols, samples) if samples > 1 else (nframes, rows, cols)
    return list(flat.reshape(shape))


def _compress_jpeg(ds: Dataset, ts: UID) -> None:
    """JPEG (ISO 10918-1) baseline or lossless SV1, one fragment per frame."""
    bits_stored = int(ds.BitsStored)
    frames = _frames(ds)
    raw_size = len(ds.PixelData)
    if ts == JPEGBaseline8Bit:
        if int(ds.BitsAllocated) != 8 or int(ds.PixelRepresentation) != 0:
            raise ValueError("JPEG baseline needs 8-bit unsigned pixel data")
        rgb = int(ds.SamplesPerPixel) == 3
        encoded = [_jpeg_baseline(frame, rgb) for frame in frames]
        if rgb:  # the encoder writes YCbCr, not subsampled
            ds.PhotometricInterpretation = "YBR_FULL"
        _mark_lossy(ds, raw_size / sum(len(e) for e in encoded), "ISO_10918_1")
    else:
        mask = (1 << bits_stored) - 1
        encoded = [
            _jpeg_lossless(np.asarray(frame, dtype=np.int64) & mask, bits_stored)
            for frame in frames
        ]
    ds.PixelData = encapsulate(encoded, has_bot=len(encoded) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = ts


# ------------------------------------------------------------ tiny JPEG (10918-1) encoders
# Enough for test images: one scan, no restart intervals, no subsampling, Huffman tables built
# from the image itself (Annex K.2), so no standard tables need to be carried here.


class _BitWriter:
    """Entropy-coded segment writer with 0xFF byte stuffing (F.1.2.3)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._nbits = 0

    def write(self, value: int, length: int) -> None:
        if length == 0:
            return
        self._acc = (self._acc << length) | (value & ((1 << length) - 1))
        self._nbits += length
        while self._nbits >= 8:
            self._nbits -= 8
            byte = (self._acc >> self._nbits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self._acc &= (1 << self._nbits) - 1

    def flush(self) -> bytes:
        if self._nbits:
            pad = 8 - self._nbits
            self.write((1 << pad) - 1, pad)  # pad with 1-bits
        return bytes(self.out)


def _category(value: int) -> int:
    return abs(value).bit_length()


def _extra_bits(value: int, size: int) -> int:
    """Additional bits of a difference/coefficient (F.1.2.1.1): ones' complement if < 0."""
    return value if value >= 0 else value + (1 << size) - 1


def _huffman(counts: Counter[int]) -> tuple[list[int], list[int], dict[int, tuple[int, int]]]:
    """Code lengths per Annex K.2 (max 16 bits, no all-ones code); returns BITS, HUFFVAL, codes."""
    freq = dict(counts)
    freq[256] = 1  # reserved symbol: guarantees no code word is all ones
    codesize = dict.fromkeys(freq, 0)
    others: dict[int, int] = {}
    live = {s: f for s, f in freq.items() if f > 0}
    while len(live) > 1:
        v1 = min(live, key=lambda s: (live[s], -s))
        f1 = live.pop(v1)
        v2 = min(live, key=lambda s: (live[s], -s))
        live[v1] = f1 + live.pop(v2)
        for v in (v1, v2):
            codesize[v] += 1
            while v in others:
                v = others[v]
                codesize[v] += 1
        tail = v1
        while tail in others:
            tail = others[tail]
        others[tail] = v2
    bits = [0] * 33
    for size in codesize.values():
        if size:
            bits[size] += 1
    i = 32
    while i > 16:  # K.3: move codes longer than 16 bits up the tree
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        i -= 1
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved symbol's code
    huffval = sorted((s for s in codesize if s != 256), key=lambda s: (codesize[s], s))
    codes: dict[int, tuple[int, int]] = {}
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length]):
            codes[huffval[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return bits[1:17], huffval, codes


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _dht(table_class: int, table_id: int, bits: list[int], huffval: list[int]) -> bytes:
    return _segment(0xC4, bytes([(table_class << 4) | table_id, *bits, *huffval]))


def _frame_header(marker: int, precision: int, shape: tuple[int, int], ncomp: int) -> bytes:
    rows, cols = shape
    comps = b"".join(bytes([c + 1, 0x11, 0]) for c in range(ncomp))
    header = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return _segment(marker, header + bytes([ncomp]) + comps)


def _scan_header(ncomp: int, ss: int, se: int) -> bytes:
    comps = b"".join(bytes([c + 1, 0x00]) for c in range(ncomp))
    return _segment(0xDA, bytes([ncomp]) + comps + bytes([ss, se, 0]))


def _jpeg_lossless(frame: PixelArray, precision: int) -> bytes:
    """Process 14, first-order prediction (selection value 1), point transform 0."""
    if not 2 <= precision <= 16:
        raise ValueError("JPEG lossless precision must be 2..16 bits")
    samples = frame[..., None] if frame.ndim == 2 else frame
    rows, cols, ncomp = samples.shape
    pred = np.empty_like(samples)
    pred[:, 1:] = samples[:, :-1]  # Ra: the sample to the left
    pred[1:, 0] = samples[:-1, 0]  # first column: Rb, the sample above
    pred[0, 0] = 1 << (precision - 1)
    diff = ((samples - pred) & 0xFFFF).astype(np.int64)
    diff[diff >= 0x8000] -= 0x10000  # modulo 2^16, as signed
    flat = [int(d) for d in diff.reshape(-1)]  # pixel-interleaved: one MCU per pixel
    sizes = [_category(d) for d in flat]
    bits, huffval, codes = _huffman(Counter(sizes))
    writer = _BitWriter()
    for d, size in zip(flat, sizes, strict=True):
        writer.write(*codes[size])
        if size not in (0, 16):  # SSSS 16 (difference 32768) has no additional bits
            writer.write(_extra_bits(d, size), size)
    return b"".join(
        [
            b"\xff\xd8",
            _frame_header(0xC3, precision, (rows, cols), ncomp),
            _dht(0, 0, bits, huffval),
            _scan_header(ncomp, 1, 0),
            writer.flush(),
            b"\xff\xd9",
        ]
    )


_ZIGZAG = np.array(
    sorted(
        ((u, v) for u in range(8) for v in range(8)),
        key=lambda p: (p[0] + p[1], p[0] if (p[0] + p[1]) % 2 else p[1]),
    )
)
_LUMA_Q = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ]
).reshape(8, 8)
_QUALITY = 90


def _dct_matrix() -> PixelArray:
    c = np.array([[math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)] for u in range(8)])
    c[0] *= math.sqrt(1 / 8)
    c[1:] *= math.sqrt(2 / 8)
    return c


def _blocks(plane: PixelArray) -> PixelArray:
    """(n_blocks, 8, 8) in raster order, edges replicated to a multiple of 8."""
    rows, cols = plane.shape
    padded = np.pad(plane, ((0, -rows % 8), (0, -cols % 8)), mode="edge")
    r8, c8 = padded.shape[0] // 8, padded.shape[1] // 8
    return padded.reshape(r8, 8, c8, 8).swapaxes(1, 2).reshape(-1, 8, 8)


def _jpeg_baseline(frame: PixelArray, rgb: bool) -> bytes:
    """Process 1 (8-bit DCT, Huffman); RGB is converted to YCbCr 4:4:4 (YBR_FULL)."""
    data = frame.astype(np.float64)
    if rgb:
        r, g, b = data[..., 0], data[..., 1], data[..., 2]
        planes = [
            0.299 * r + 0.587 * g + 0.114 * b,
            128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
            128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
        ]
    else:
        planes = [data]
    scale = 200 - 2 * _QUALITY
    quant = np.clip((_LUMA_Q * scale + 50) // 100, 1, 255)
    dct = _dct_matrix()
    coeffs = []  # per component: (n_blocks, 64) quantised, zigzag order
    for plane in planes:
        blocks = _blocks(np.clip(plane.round(), 0, 255)) - 128.0
        transformed = dct @ blocks @ dct.T
        q = np.round(transformed / quant).astype(np.int64)
        coeffs.append(q[:, _ZIGZAG[:, 0], _ZIGZAG[:, 1]])
    symbols = _baseline_symbols(coeffs)
    dc_bits, dc_val, dc_codes = _huffman(Counter(s for cls, s, _, _ in symbols if cls == 0))
    ac_bits, ac_val, ac_codes = _huffman(Counter(s for cls, s, _, _ in symbols if cls == 1))
    writer = _BitWriter()
    for cls, symbol, extra, size in symbols:
        writer.write(*(dc_codes if cls == 0 else ac_codes)[symbol])
        writer.write(extra, size)
    zigzag_q = bytes(int(quant[u, v]) for u, v in _ZIGZAG)
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xDB, b"\x00" + zigzag_q),
            _frame_header(0xC0, 8, frame.shape[:2], len(planes)),
            _dht(0, 0, dc_bits, dc_val),
            _dht(1, 0, ac_bits, ac_val),
            _scan_header(len(planes), 0, 63),
            writer.flush(),
            b"\xff\xd9",
        ]
    )


def _baseline_symbols(coeffs: list[PixelArray]) -> list[tuple[int, int, int, int]]:
    """(class, symbol, extra bits, extra size) in MCU order: one block per component."""
    out: list[tuple[int, int, int, int]] = []
    previous_dc = [0] * len(coeffs)
    for block_index in range(coeffs[0].shape[0]):
        for comp, comp_coeffs in enumerate(coeffs):
            block = [int(v) for v in comp_coeffs[block_index]]
            diff = block[0] - previous_dc[comp]
            previous_dc[comp] = block[0]
            size = _category(diff)
            out.append((0, size, _extra_bits(diff, size), size))
            out.extend(_ac_symbols(block[1:]))
    return out


def _ac_symbols(ac: Iterable[int]) -> list[tuple[int, int, int, int]]:
    out: list[tuple[int, int, int, int]] = []
    run = 0
    for value in ac:
        if value == 0:
            run += 1
            continue
        while run > 15:
            out.append((1, 0xF0, 0, 0))  # ZRL: 16 zeros
            run -= 16
        size = _category(value)
        out.append((1, (run << 4) | size, _extra_bits(value, size), size))
        run = 0
    if run:
        out.append((1, 0x00, 0, 0))  # EOB
    return out
