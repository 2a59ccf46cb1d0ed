"""Which decoder decodes which compressed transfer syntax, in one table.

pydicom tries the installed decoder plugins of a transfer syntax in its own order, GDCM first
wherever python-gdcm is installed. pacs installs python-gdcm (BSD) for the JPEG processes
(PS3.5 A.4.1: baseline, extended, lossless) that GPLv3 pylibjpeg-libjpeg decoded before, and
nothing else is left to pydicom's order:

- JPEG 2000 and HTJ2K are openjpeg's (pylibjpeg-openjpeg), never GDCM's: a damaged JPEG 2000
  codestream makes GDCM end the whole process (an uncaught C++ exception, ``std::terminate``),
  where openjpeg raises an error. A peer's file must not take the server down.
- JPEG-LS is CharLS's (pyjpegls).
- JPEG Extended is :mod:`pacs.services.gdcm_jpeg`'s, which also decodes 12-bit samples
  (pydicom's GDCM plugin refuses them).
- Pillow (libjpeg-turbo, openjpeg) is the fall-back for 8-bit JPEG and for JPEG 2000.

RLE and the native syntaxes keep pydicom's decoders. :func:`use_chosen_decoders` applies the
table; the composition root calls it once, before anything decodes (pydicom's plugin registry
is process-wide and not thread-safe to change).
"""

from __future__ import annotations

import contextlib

from pydicom import uid
from pydicom.pixels.decoders.base import get_decoder

GDCM_JPEG = "pacs-gdcm-jpeg"

#: The decoder plugins, by pydicom label, and where each one's frame function is.
_PLUGINS: dict[str, tuple[str, str]] = {
    "gdcm": ("pydicom.pixels.decoders.gdcm", "_decode_frame"),
    "pylibjpeg": ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"),
    "pyjpegls": ("pydicom.pixels.decoders.pyjpegls", "_decode_frame"),
    "pillow": ("pydicom.pixels.decoders.pillow", "_decode_frame"),
    GDCM_JPEG: ("pacs.services.gdcm_jpeg", "decode_frame"),
}

#: Per transfer syntax, the plugins that decode it, in the order they are tried.
DECODERS: dict[str, tuple[str, ...]] = {
    uid.JPEGBaseline8Bit: ("gdcm", "pillow"),
    uid.JPEGExtended12Bit: (GDCM_JPEG, "pillow"),
    uid.JPEGLossless: ("gdcm",),
    uid.JPEGLosslessSV1: ("gdcm",),
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
