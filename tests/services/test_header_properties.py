"""Property-based tests of the header reader (``instance_reader``, ``element_walk``,
``part10``): what a peer sends is read the way pydicom reads it, and nothing a peer can send
makes it raise anything but the project's named errors (``InvalidInstance`` and its kin).

Hypothesis examples are bounded (a few hundred per property, no deadline: the machine is
shared). pydicom's warnings about odd values are silenced here: in the server they are log
lines, and the property is about what is raised.
"""

from __future__ import annotations

import io
import zlib

import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.services.decoding_limits import DecodeLimits
from pacs.services.errors import InvalidInstance, PacsError
from pacs.services.instance_reader import Header, index_values, read_header
from pacs.services.part10 import as_part10
from storage.attributes import extract, extract_converted
from tests.factories import datasets as f

pytestmark = pytest.mark.filterwarnings("ignore")

BOUNDED = settings(max_examples=150, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian]
CHARSETS = {None: "ABCXYZabcxyz019 -.", "ISO_IR 100": "ABCabcÄÖÜäöüßéÉ -",
            "ISO_IR 192": "ABCabcÄäé日本語한국어Ωπ -"}


@st.composite
def instances(draw: st.DrawFn) -> Dataset:
    """A small instance with drawn identifying values, text in a drawn character set, and
    sometimes a nested sequence, a private element, no pixel data."""
    charset = draw(st.sampled_from(list(CHARSETS)))
    text = st.text(alphabet=CHARSETS[charset], max_size=24)
    name = draw(st.lists(text.filter(lambda t: len(t) <= 12), min_size=1, max_size=3))
    values = {
        "PatientID": draw(st.text(alphabet="ABC0123-_", min_size=1, max_size=16)),
        "PatientName": "^".join(name),
        "StudyDescription": draw(text),
        "StudyDate": draw(st.sampled_from(["20240115", "19991231", ""])),
        "AccessionNumber": draw(st.text(alphabet="ACN0123", max_size=16)),
        "InstanceNumber": draw(st.integers(1, 2**31 - 1)),
        "Rows": draw(st.integers(1, 8)),
        "Columns": draw(st.integers(1, 8)),
    }
    if charset is not None:
        values["SpecificCharacterSet"] = charset
    ds = f.ct_instance(**values)
    if draw(st.booleans()):
        item = Dataset()
        item.ReferencedSOPClassUID = f.CT_IMAGE
        item.ReferencedSOPInstanceUID = f.make_uid("ref", draw(st.integers(0, 99)))
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator = "121071", "DCM"
        item.PurposeOfReferenceCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item] * draw(st.integers(0, 3)))
    if draw(st.booleans()):
        ds.add_new(0x00090010, "LO", "PACS TESTS")
        ds.add_new(0x00091001, "OB", draw(st.binary(max_size=64)) + b"\0" * 0)
    if draw(st.booleans()):
        del ds.PixelData
    return ds


def part10(ds: Dataset, syntax: str) -> bytes:
    return f.to_part10_bytes(f.encode(ds, syntax))


def read(data: bytes) -> Header:
    """What ingest reads from a received file: the header, then the index's values."""
    header = read_header(io.BytesIO(data), len(data), DecodeLimits.unlimited())
    index_values(header)
    return header


def assert_agrees_with_pydicom(header: Header, data: bytes) -> None:
    reference = pydicom.dcmread(io.BytesIO(data))
    assert header.transfer_syntax_uid == reference.file_meta.TransferSyntaxUID
    assert (header.sop_class_uid, header.sop_instance_uid, header.study_instance_uid,
            header.series_instance_uid) == (reference.SOPClassUID, reference.SOPInstanceUID,
                                            reference.StudyInstanceUID,
                                            reference.SeriesInstanceUID)
    assert extract(header.dataset, header.elements) == extract_converted(reference)


@BOUNDED
@given(instances(), st.sampled_from(SYNTAXES))
def test_valid_instances_are_read_as_pydicom_reads_them(ds: Dataset, syntax: str) -> None:
    data = part10(ds, syntax)

    assert_agrees_with_pydicom(read(data), data)


@BOUNDED
@given(instances(), st.sampled_from(SYNTAXES), st.data())
def test_cut_instances_raise_only_named_errors(
    ds: Dataset, syntax: str, data: st.DataObject
) -> None:
    whole = part10(ds, syntax)
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    try:
        header = read(whole[:cut])
    except PacsError:
        return
    # a cut at an element boundary is a shorter, complete data set: read as pydicom reads it
    assert_agrees_with_pydicom(header, whole[:cut])


@BOUNDED
@given(instances(), st.sampled_from(SYNTAXES), st.data())
def test_mutated_instances_raise_only_named_errors(
    ds: Dataset, syntax: str, data: st.DataObject
) -> None:
    mutated = bytearray(part10(ds, syntax))
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        at = data.draw(st.integers(128, len(mutated) - 1), label="at")
        mutated[at] = data.draw(st.integers(0, 255), label="byte")
    try:
        read(bytes(mutated))
    except PacsError:
        pass


@BOUNDED
@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_random_bytes_raise_only_named_errors(
    body: bytes, with_prefix: bool, with_meta_group: bool
) -> None:
    data = body
    if with_meta_group:  # a plausible group length, so the walk goes past the prefix
        data = b"\x02\x00\x00\x00UL\x04\x00" + len(body[:64]).to_bytes(4, "little") + body
    if with_prefix:
        data = b"\0" * 128 + b"DICM" + data
    try:
        read(data)
    except PacsError:
        pass
    try:
        wrapped = as_part10(data)
    except PacsError:
        return
    try:
        read(wrapped)
    except PacsError:
        pass


@BOUNDED
@given(st.binary(max_size=400))
def test_random_deflated_data_sets_raise_only_named_errors(body: bytes) -> None:
    ds = f.ct_instance(Rows=2, Columns=2)
    meta = f.to_part10_bytes(f.encode(ds, DeflatedExplicitVRLittleEndian))
    group_length = int.from_bytes(meta[140:144], "little")
    header = meta[: 144 + group_length]
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for data in (header + body, header + compressor.compress(body) + compressor.flush()):
        try:
            read(data)
        except PacsError:
            pass


@BOUNDED
@given(instances(), st.booleans())
def test_bare_data_sets_are_wrapped_and_read_as_pydicom_reads_them(
    ds: Dataset, implicit: bool
) -> None:
    bare = Dataset(ds)
    bare.file_meta = FileMetaDataset()
    out = io.BytesIO()
    pydicom.dcmwrite(out, bare, implicit_vr=implicit, little_endian=True)
    data = out.getvalue()

    wrapped = as_part10(data)

    assert wrapped.endswith(data)
    assert_agrees_with_pydicom(read(wrapped), wrapped)
    cut = data[: len(data) // 2]
    try:
        read(as_part10(cut))
    except PacsError:
        pass


@BOUNDED
@given(instances(), st.booleans(), st.booleans(), st.data())
def test_mutated_bare_data_sets_raise_only_named_errors(
    ds: Dataset, implicit: bool, with_meta: bool, data: st.DataObject
) -> None:
    bare = Dataset(ds)
    if not with_meta:
        bare.file_meta = FileMetaDataset()
    out = io.BytesIO()
    pydicom.dcmwrite(out, bare, implicit_vr=implicit, little_endian=True)
    mutated = bytearray(out.getvalue())
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        at = data.draw(st.integers(0, min(len(mutated) - 1, 400)), label="at")
        mutated[at] = data.draw(st.integers(0, 255), label="byte")
    try:
        read(as_part10(bytes(mutated)))
    except PacsError:
        pass


# -- what the properties found, kept as plain examples --------------------------------------


def test_a_file_meta_group_length_of_one_byte_is_invalid_not_a_crash() -> None:
    """pydicom raised its BytesLengthException (not a ValueError) for a 1-byte UL."""
    data = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x01\x00\xca"
    with pytest.raises(InvalidInstance):
        read(data)


def test_a_bare_data_set_with_an_unknown_vr_is_invalid_not_a_crash() -> None:
    """pydicom raised NotImplementedError for the VR ``U\\0`` of SOP Class UID."""
    bare = Dataset(f.ct_instance())
    bare.file_meta = FileMetaDataset()
    out = io.BytesIO()
    pydicom.dcmwrite(out, bare, implicit_vr=False, little_endian=True)
    data = out.getvalue()
    at = data.index(b"\x08\x00\x16\x00UI")
    broken = data[: at + 4] + b"U\x00" + data[at + 6:]
    with pytest.raises(InvalidInstance):
        as_part10(broken)


def test_an_indexed_binary_value_of_the_wrong_length_is_invalid_not_a_crash() -> None:
    """Rows (US) of one byte: the header reads, the index value cannot be converted."""
    data = f.to_part10_bytes(f.ct_instance())
    at = data.index(b"\x28\x00\x10\x00US\x02\x00")
    data = data[: at + 6] + b"\x01\x00" + data[at + 8 : at + 9] + data[at + 10 :]
    header = read_header(io.BytesIO(data), len(data))
    with pytest.raises(InvalidInstance):
        index_values(header)


def test_properties_are_bounded() -> None:
    """Every property above runs a bounded number of examples without a deadline."""
    assert BOUNDED.max_examples <= 200 and BOUNDED.deadline is None
    assume(True)
