"""The decoding guard itself: geometry read from a header is checked, never trusted; a deflate
stream is inflated in steps and given up on past the limit (memory measured with
tracemalloc); the decoding slots make the excess wait, then fail with a named error; ingest's
header reader and the transcoder use them."""

from __future__ import annotations

import io
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

from pacs.services.decoding_limits import (
    MB,
    DecodeLimits,
    Geometry,
    GeometryError,
    codestream_size,
)
from pacs.services.errors import (
    CannotTranscode,
    DecoderBusy,
    DecodeTooLarge,
    InflatesTooLarge,
    InvalidInstance,
)
from pacs.services.instance_reader import read_header
from pacs.services.transcode import transcode
from tests.factories.datasets import EncodingUnavailable, ct_instance, encode, to_part10_bytes
from tests.factories.huge import constant_rle_instance, deflate_bomb_instance


def _header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in {"Rows": 512, "Columns": 512, "BitsAllocated": 16, **values}.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def test_geometry_is_the_declared_size() -> None:
    geometry = Geometry.of(_header(SamplesPerPixel=3, BitsAllocated=8, NumberOfFrames="30"))
    assert geometry.frame_bytes == 512 * 512 * 3
    assert geometry.number_of_frames == 30
    assert Geometry.of(_header()).frame_bytes == 512 * 512 * 2  # one sample, one frame


@pytest.mark.parametrize("values", [
    {"Rows": None}, {"Columns": 0}, {"BitsAllocated": None}, {"BitsAllocated": 65},
    {"SamplesPerPixel": 9}, {"NumberOfFrames": "lots"}, {"NumberOfFrames": "-3"},
    {"NumberOfFrames": "99999999999"},
])
def test_missing_or_garbage_geometry_is_refused(values: dict[str, object]) -> None:
    header = {"Rows": 512, "Columns": 512, "BitsAllocated": 16, **values}  # as read, unchecked
    with pytest.raises(GeometryError):
        Geometry.of(header)


def test_a_decode_over_the_limit_is_refused_with_its_size() -> None:
    limits = DecodeLimits(max_decoded_bytes=64 * MB, max_concurrent=1)
    huge = Geometry.of(_header(Rows=16000, Columns=16000, BitsAllocated=8))
    with pytest.raises(DecodeTooLarge, match=r"would take 245 MB, above the limit of 64 MB"):
        limits.check(huge, frames=1, what="SOP Instance 1.2.3")
    small = Geometry.of(_header())
    assert limits.check(small, frames=40, what="x") == 512 * 512 * 2 * 40
    with pytest.raises(DecodeTooLarge):  # the caller's working copies count too
        limits.check(small, frames=40, what="x", extra_per_sample=6)


def test_inflating_stops_at_the_limit_without_holding_more() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = bomb.compress(bytes(256 * MB)) + bomb.flush()
    assert len(deflated) < MB
    limits = DecodeLimits(max_decoded_bytes=8 * MB, max_concurrent=1)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeTooLarge, match="inflates beyond the limit of 8 MB"):
            limits.inflate(deflated, what="the data set")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MB, peak


def test_inflating_within_the_limit_and_broken_streams() -> None:
    data = bytes(range(256)) * 4096
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(data) + packer.flush()
    limits = DecodeLimits(max_decoded_bytes=2 * MB, max_concurrent=1)
    assert limits.inflate(deflated, what="x") == data
    assert limits.inflate(deflated, what="x", keep=False) == b""
    with pytest.raises(InvalidInstance, match="does not end"):
        limits.inflate(deflated[: len(deflated) // 2], what="x", corrupt=InvalidInstance)
    with pytest.raises(InvalidInstance, match="corrupt"):
        limits.inflate(b"\xff" * 64, what="x", corrupt=InvalidInstance)


def test_the_excess_decode_waits_then_is_told_busy() -> None:
    limits = DecodeLimits(max_decoded_bytes=MB, max_concurrent=1, wait_seconds=0.05)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with limits.slot():
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        with pytest.raises(DecoderBusy, match="try again"), limits.slot():
            pass
    finally:
        release.set()
        holder.join()
    with limits.slot():  # freed again
        pass


def test_ingest_refuses_a_deflated_data_set_that_inflates_beyond_the_limit(
    tmp_path: Path,
) -> None:
    data = to_part10_bytes(deflate_bomb_instance(96 * MB))
    limits = DecodeLimits(max_decoded_bytes=32 * MB, max_concurrent=1)
    with pytest.raises(InflatesTooLarge, match="inflates beyond the limit of 32 MB"):
        read_header(io.BytesIO(data), len(data), limits)  # the fast path, in memory
    path = tmp_path / "bomb.dcm"
    path.write_bytes(data)
    with path.open("rb") as file, pytest.raises(InflatesTooLarge):  # pydicom's path
        read_header(file, len(data), limits)
    assert read_header(io.BytesIO(data), len(data)).sop_instance_uid  # no limit given


def test_transcoding_checks_the_whole_image_and_holds_a_slot() -> None:
    rle = to_part10_bytes(constant_rle_instance(2000, 2000))  # 4 MB decoded
    with pytest.raises(DecodeTooLarge, match="above the limit of 1 MB"):
        transcode(rle, ExplicitVRLittleEndian, DecodeLimits(max_decoded_bytes=MB,
                                                              max_concurrent=1))
    busy = DecodeLimits(max_decoded_bytes=64 * MB, max_concurrent=1, wait_seconds=0.01)
    with busy.slot(), pytest.raises(DecoderBusy):
        transcode(rle, ExplicitVRLittleEndian, busy)
    assert len(transcode(rle, ExplicitVRLittleEndian, busy)) > 4_000_000
    bomb = to_part10_bytes(deflate_bomb_instance(16 * MB))
    with pytest.raises(CannotTranscode, match="inflates beyond"):
        transcode(bomb, ExplicitVRLittleEndian, DecodeLimits(max_decoded_bytes=4 * MB,
                                                              max_concurrent=1))
    assert transcode(to_part10_bytes(ct_instance()), ExplicitVRLittleEndian)


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless])
def test_the_size_a_codestream_declares_is_read(transfer_syntax: str) -> None:
    try:
        ds = encode(ct_instance(Rows=48, Columns=80), transfer_syntax)
    except EncodingUnavailable as reason:
        pytest.skip(str(reason))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert codestream_size(frame) == (80, 48, 1)


def test_a_codestream_larger_than_its_header_is_not_decoded() -> None:
    ds = encode(ct_instance(), JPEG2000Lossless)
    data = bytearray(ds.PixelData)
    siz = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, siz + 8, 30000, 30000)  # Xsiz, Ysiz; the header says 64x64
    ds.PixelData = bytes(data)
    limits = DecodeLimits(max_decoded_bytes=64 * MB, max_concurrent=1)
    with pytest.raises(CannotTranscode, match="codestream declares 30000x30000"):
        transcode(to_part10_bytes(ds), ExplicitVRLittleEndian, limits)
