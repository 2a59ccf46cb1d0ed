"""The decoder table (pacs.services.codecs): each compressed syntax decodes with the plugins
the table names, GDCM never in this process, and a GDCM child that a damaged codestream kills
fails that decode only (the next one gets a new child)."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from pacs.services.codecs import DECODERS, GDCM_JPEG, use_chosen_decoders
from pacs.services.errors import CannotTranscode
from pacs.services.transcode import transcode
from tests.factories import datasets as f


def _lossless_with_precision(precision: int) -> Dataset:
    """A JPEG lossless CT whose SOF3 says ``precision`` bits per sample (T.81 B.2.2: the
    byte after FFD8 FFC3 and the segment length)."""
    ds = f.encode(f.ct_instance(PatientID="PAT-CODEC"), JPEGLosslessSV1)
    fragment = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert fragment[:4] == b"\xff\xd8\xff\xc3"
    fragment[6] = precision
    ds.PixelData = encapsulate([bytes(fragment)])
    return ds


def test_each_syntax_has_the_plugins_of_the_table() -> None:
    use_chosen_decoders()  # a second time changes nothing

    for transfer_syntax, labels in DECODERS.items():
        decoder = get_decoder(transfer_syntax)
        assert set(decoder.available_plugins) <= set(labels), transfer_syntax.name
        assert "gdcm" not in decoder.available_plugins  # in-process GDCM: never
    assert GDCM_JPEG in get_decoder(JPEGLosslessSV1).available_plugins


def test_gdcm_itself_dies_on_a_17_bit_lossless_jpeg() -> None:
    """Why GDCM runs in a child: in process, this one header byte ends the interpreter."""
    data = f.to_part10_bytes(_lossless_with_precision(17))
    in_process = ("import sys, io, pydicom; "
                  "ds = pydicom.dcmread(io.BytesIO(sys.stdin.buffer.read())); "
                  "ds.pixel_array_options(decoding_plugin='gdcm'); ds.pixel_array")

    died = subprocess.run([sys.executable, "-c", in_process], input=data,
                          capture_output=True, timeout=120)

    assert died.returncode < 0  # a signal (SIGSEGV or SIGABRT), not an exception


def test_a_decoder_that_dies_fails_that_decode_only() -> None:
    damaged = f.to_part10_bytes(_lossless_with_precision(17))
    good = f.to_part10_bytes(f.encode(f.ct_instance(PatientID="PAT-CODEC"), JPEGLosslessSV1))

    with pytest.raises(CannotTranscode) as caught:
        transcode(damaged, ExplicitVRLittleEndian)

    assert "the GDCM decoder process ended" in str(caught.value)
    decoded = dcmread(BytesIO(transcode(good, ExplicitVRLittleEndian)))
    assert decoded.PixelData == f.ct_instance(PatientID="PAT-CODEC").PixelData
