"""A pydicom decoder plugin: JPEG Extended (Process 2 & 4, PS3.5 A.4.1) through GDCM, 12-bit
samples included.

pydicom's own GDCM plugin refuses 12-bit JPEG Extended, although GDCM (python-gdcm 3.2)
decodes it to the values libjpeg gives; this plugin hands such a frame to GDCM the way
pydicom's plugin hands an 8-bit one. GDCM first tries its 8-bit libjpeg on a 16-bit container
and writes ``Unsupported JPEG data precision 12`` to the process's stderr before it decodes
with its 12-bit one: a diagnostic, not an error. Registered by :mod:`pacs.services.codecs`.
"""

from __future__ import annotations

from typing import Any, cast

from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

#: pydicom's plugin contract: what the plugin needs per transfer syntax
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}


def _gdcm() -> Any:
    import gdcm  # python-gdcm has no type hints (pyproject: mypy ignores it)

    return gdcm


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: whether this plugin can decode ``transfer_syntax``."""
    if transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    try:
        _gdcm()
    except ImportError:
        return False
    return True


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG Extended frame, decoded to Bits Allocated wide samples."""
    gdcm = _gdcm()
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    photometric = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    syntax = gdcm.TransferSyntax.GetTSType(str.__str__(runner.transfer_syntax))
    image.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    bits_stored = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(
        runner.samples_per_pixel, runner.bits_allocated, bits_stored, bits_stored - 1,
        runner.pixel_representation,
    ))
    buffer = image.GetBuffer()
    if buffer is None:  # GDCM reports a codestream it cannot decode by returning nothing
        raise ValueError("GDCM could not decode the JPEG Extended codestream")
    # GDCM gives the samples as a str; surrogateescape gets the bytes back unchanged
    return cast(bytes, buffer.encode("utf-8", "surrogateescape"))
