"""Small files that declare or hold huge images: a constant RLE image of any size, and a
deflated data set that inflates to many times its size (PS3.5 G, A.5).

The RLE frame is written by hand, one PackBits replicate run of 128 bytes after another
(PS3.5 G.3.1): pydicom's encoder would need the whole array in memory first, and the point is
a few MB of file declaring hundreds of MB of pixels.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from tests.factories.datasets import ct_instance, sc_instance

_RUN = 128  # the longest PackBits replicate run: header byte -127 (0x81), then the value


def constant_rle_frame(rows: int, columns: int, value: int = 100) -> bytes:
    """One 8-bit RLE frame (PS3.5 G.3): a header naming one segment, the segment a replicate
    run per 128 pixels of every row (runs do not cross rows, G.3.1)."""
    full, rest = divmod(columns, _RUN)
    row = bytes([0x81, value]) * full
    if rest:
        row += bytes([(257 - rest) & 0xFF, value]) if rest > 1 else bytes([0, value])
    segment = row * rows
    if len(segment) % 2:
        segment += b"\x00"
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return header + segment


def constant_rle_instance(rows: int, columns: int, **attributes: Any) -> Dataset:
    """A Secondary Capture 8-bit MONOCHROME2 image of ``rows`` x ``columns`` in RLE Lossless;
    the file is about ``rows * columns / 64`` bytes."""
    ds = sc_instance(Rows=8, Columns=8, **attributes)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("PlanarConfiguration", "NumberOfFrames"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = encapsulate([constant_rle_frame(rows, columns)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def deflate_bomb_instance(inflated_bytes: int, **attributes: Any) -> Dataset:
    """A CT data set in Deflated Explicit VR Little Endian whose Pixel Data is
    ``inflated_bytes`` of zeros (16-bit, one square-ish frame): it deflates about 1000 to 1."""
    ds = ct_instance(Rows=8, Columns=8, **attributes)
    side = int((inflated_bytes // 2) ** 0.5) + 1
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds
