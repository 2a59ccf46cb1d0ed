"""The GDCM decoding process of :mod:`pacs.services.gdcm_jpeg`: ``python -m
pacs.services.gdcm_child`` decodes JPEG frames with GDCM until its stdin closes. It imports
GDCM and the standard library only (about 33 MB, where pydicom would double it).

On stdin, per frame: one JSON line (the frame's geometry, its transfer syntax and the
codestream's length), then the codestream. On stdout: one JSON line, ``{"size": N}`` followed
by the N bytes of the decoded frame, or ``{"error": "..."}``. A codestream that crashes GDCM
ends this process; the server sees its stdout close.
"""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO

_MAX_REQUEST_LINE = 4096


class GdcmFailed(ValueError):
    """GDCM could not decode the frame."""


def decode(gdcm: Any, request: dict[str, Any], src: bytes) -> bytes:
    """What pydicom's GDCM plugin does with a frame, without its 12-bit refusal."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((request["columns"], request["rows"], 1))
    image.SetDataElement(element)
    photometric = gdcm.PhotometricInterpretation.GetPIType(request["photometric_interpretation"])
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    if request["samples_per_pixel"] > 1:
        image.SetPlanarConfiguration(request["planar_configuration"])
    syntax = gdcm.TransferSyntax.GetTSType(request["transfer_syntax"])
    image.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    bits_stored = request["bits_stored"]
    image.SetPixelFormat(gdcm.PixelFormat(
        request["samples_per_pixel"], request["bits_allocated"], bits_stored, bits_stored - 1,
        request["pixel_representation"],
    ))
    buffer = image.GetBuffer()
    if buffer is None:  # GDCM's answer to a codestream it cannot decode
        raise GdcmFailed("GDCM could not decode the JPEG codestream")
    # GDCM gives the samples as a str; surrogateescape gets the bytes back unchanged
    frame: bytes = buffer.encode("utf-8", "surrogateescape")
    return frame


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    import gdcm  # python-gdcm has no type hints (pyproject: mypy ignores it)

    while True:
        line = stdin.readline(_MAX_REQUEST_LINE)
        if not line:
            return  # the server closed the pipe
        request = json.loads(line)
        src = stdin.read(int(request["size"]))
        try:
            frame = decode(gdcm, request, src)
        except Exception as error:  # GDCM raises what its SWIG layer makes of C++ errors
            stdout.write(json.dumps({"error": " ".join(str(error).split())[:500]}).encode()
                         + b"\n")
        else:
            stdout.write(json.dumps({"size": len(frame)}).encode() + b"\n" + frame)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
