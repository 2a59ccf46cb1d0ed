"""Which decoder decodes which compressed transfer syntax, in one table.

pydicom tries the installed decoder plugins of a transfer syntax in its own order, GDCM first
wherever python-gdcm is installed. pacs installs python-gdcm (BSD) for the JPEG processes
(PS3.5 A.4.1) that GPLv3 pylibjpeg-libjpeg decoded before, but GDCM ends the whole process
(segmentation fault, ``std::terminate``) on a damaged codestream, JPEG and JPEG 2000 alike, and
a peer's file must not take the server down. So nothing is left to pydicom's order:

- JPEG baseline is Pillow's (libjpeg-turbo, in process), then GDCM's;
- JPEG extended (12-bit samples too) and lossless are GDCM's, always in a child process
  (:mod:`pacs.services.gdcm_jpeg`): a crash there fails that one decode;
- JPEG-LS is CharLS's (pyjpegls);
- JPEG 2000 and HTJ2K are openjpeg's (pylibjpeg-openjpeg), then Pillow's, never GDCM's.

RLE and the native syntaxes keep pydicom's decoders. :func:`use_chosen_decoders` applies the
table; the composition root calls it once, before anything decodes (pydicom's plugin registry
is process-wide and not thread-safe to change).
"""

from __future__ import annotations

import contextlib

from pydicom import uid
from pydicom.pixels.decoders.base import get_decoder

GDCM_JPEG = "gdcm-child"

#: The decoder plugins, by pydicom label, and where each one's frame function is.
_PLUGINS: dict[str, tuple[str, str]] = {
    "gdcm": ("pydicom.pixels.decoders.gdcm", "_decode_frame"),  # removed everywhere
    "pylibjpeg": ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"),
    "pyjpegls": ("pydicom.pixels.decoders.pyjpegls", "_decode_frame"),
    "pillow": ("pydicom.pixels.decoders.pillow", "_decode_frame"),
    GDCM_JPEG: ("pacs.services.gdcm_jpeg", "decode_frame"),
}

#: Per transfer syntax, the plugins that decode it, in the order they are tried.
DECODERS: dict[str, tuple[str, ...]] = {
    uid.JPEGBaseline8Bit: ("pillow", GDCM_JPEG),
    uid.JPEGExtended12Bit: (GDCM_JPEG, "pillow"),
    uid.JPEGLossless: (GDCM_JPEG,),
    uid.JPEGLosslessSV1: (GDCM_JPEG,),
    uid.JPEGLSLossless: ("pyjpegls",),
    uid.JPEGLSNearLossless: ("pyjpegls",),
    uid.JPEG2000Lossless: ("pylibjpeg", "pillow"),
    uid.JPEG2000: ("pylibjpeg", "pillow"),
    uid.HTJ2KLossless: ("pylibjpeg",),
    uid.HTJ2KLosslessRPCL: ("pylibjpeg",),
    uid.HTJ2K: ("pylibjpeg",),
}


def use_chosen_decoders() -> None:
    """Give each syntax of :data:`DECODERS` exactly its plugins, in the table's order (a plugin
    whose package is missing stays listed as missing). Idempotent."""
    for transfer_syntax, labels in DECODERS.items():
        decoder = get_decoder(transfer_syntax)
        for label in _PLUGINS:
            with contextlib.suppress(ValueError):  # not registered for this syntax
                decoder.remove_plugin(label)
        for label in labels:
            decoder.add_plugin(label, _PLUGINS[label])
