"""Rendered and thumbnail images (PS3.18 8.3.5, 9.1.2 for WADO-URI) of a decoded frame.

Grayscale: Modality LUT (Rescale Slope/Intercept, PS3.3 C.11.1), then the VOI window (PS3.3
C.11.2.1.2): the ``window`` query parameter, else the first Window Center/Width of the data
set, else the frame's minimum and maximum; LINEAR, LINEAR_EXACT or SIGMOID; MONOCHROME1 is
inverted. Color frames are shown as decoded (RGB; YBR was converted by the decoder), scaled to
8 bits when stored wider. A viewport (``vw,vh``) scales the image to fit inside it, aspect
ratio kept, never below one pixel; a frame much larger than the viewport is first subsampled
(every k-th row and column, to twice the viewport at least) so that the arithmetic runs on
the small copy. Arithmetic is float32, in place: one working copy of the frame (4 bytes per
sample) and the 8-bit result (:data:`WORKING_BYTES_PER_SAMPLE`, counted against the decoding
limit with the decoded frame). Not done: presentation states, VOI LUT sequences, per-frame
functional groups, annotations, cropping (``sx,sy,sw,sh``) and ``image/gif``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pacs.services.decoding_limits import VIEWING_EXTRA_PER_SAMPLE
from pacs.services.frames import DecodedFrame

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
THUMBNAIL_SIZE = 128  # pixels: the longer side of a thumbnail without a viewport
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
#: Bytes per decoded sample a rendering may need beyond the decoded frame: the float32
#: working copy, the 8-bit result and Pillow's copy of it (an upper bound: a viewport makes
#: the working copy smaller).
WORKING_BYTES_PER_SAMPLE = VIEWING_EXTRA_PER_SAMPLE


class RenderingError(ValueError):
    """A rendering parameter that cannot be used (the route answers 400)."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Rendering:
    media_type: str = JPEG
    window: Window | None = None
    viewport: tuple[int, int] | None = None  # (columns, rows) to fit inside
    quality: int = 90


def parse_window(text: str | None) -> Window | None:
    """``center,width[,function]`` (PS3.18 8.3.5.1.3)."""
    if text is None or not text.strip():
        return None
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 3):
        raise RenderingError("window must be center,width[,function]")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except ValueError:
        raise RenderingError(f"window {text!r}: center and width must be numbers") from None
    function = pieces[2].upper() if len(pieces) == 3 else "LINEAR"
    if function not in _FUNCTIONS:
        raise RenderingError(f"window function must be one of {', '.join(_FUNCTIONS)}")
    if width < (1 if function == "LINEAR" else 0) or width == 0:
        raise RenderingError("window width must be positive (at least 1 for LINEAR)")
    return Window(center, width, function)


def parse_viewport(text: str | None) -> tuple[int, int] | None:
    """``vw,vh`` (PS3.18 8.3.5.1.2); a cropped viewport (``vw,vh,sx,sy,sw,sh``) is refused."""
    if text is None or not text.strip():
        return None
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) != 2:
        raise RenderingError("viewport must be vw,vh (cropping is not supported)")
    return parse_size(pieces[0], pieces[1])


def parse_size(columns: str | int | None, rows: str | int | None) -> tuple[int, int] | None:
    """A (columns, rows) box from two optional positive integers (one may be missing)."""
    if columns in (None, "") and rows in (None, ""):
        return None
    try:
        width = int(columns) if columns not in (None, "") else 0
        height = int(rows) if rows not in (None, "") else 0
    except ValueError:
        raise RenderingError("viewport, rows and columns must be whole numbers") from None
    if width < 0 or height < 0 or (width == 0 and height == 0) or max(width, height) > 16384:
        raise RenderingError("viewport, rows and columns must be between 1 and 16384")
    return width, height


def parse_quality(text: str | None) -> int:
    if text is None or not text.strip():
        return 90
    try:
        quality = int(text)
    except ValueError:
        raise RenderingError("quality must be a whole number from 1 to 100") from None
    if not 1 <= quality <= 100:
        raise RenderingError("quality must be a whole number from 1 to 100")
    return quality


def render(frame: DecodedFrame, options: Rendering) -> bytes:
    """The frame as a JPEG or PNG image."""
    pixels = frame.pixels
    if options.viewport is not None:
        pixels = _subsampled(pixels, options.viewport)
    image = Image.fromarray(_eight_bits(pixels, frame, options.window))
    if options.viewport is not None:
        image = image.resize(_fit(image.size, options.viewport), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == PNG:
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def thumbnail_viewport(viewport: tuple[int, int] | None) -> tuple[int, int]:
    return viewport or (THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def _subsampled(pixels: np.ndarray[Any, Any], box: tuple[int, int]) -> np.ndarray[Any, Any]:
    """A view of every k-th row and column, k as large as keeps at least twice the size the
    image is fitted to (so the final resampling still has detail to average)."""
    rows, columns = pixels.shape[:2]
    width, height = _fit((columns, rows), box)
    step = max(1, min(columns // (2 * width), rows // (2 * height)))
    return pixels[::step, ::step] if step > 1 else pixels


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled to fit inside ``box`` (a 0 side is unbounded), aspect ratio kept."""
    width, height = size
    box_width, box_height = box
    scales = [s for s in (box_width / width if box_width else 0,
                          box_height / height if box_height else 0) if s > 0]
    scale = min(scales)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _first(value: Any) -> float | None:
    """The first value of a possibly multi-valued number (Window Center may have several)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _eight_bits(
    pixels: np.ndarray[Any, Any], frame: DecodedFrame, window: Window | None
) -> np.ndarray[Any, Any]:
    header = frame.header
    if pixels.ndim == 3:  # color: samples last
        if pixels.dtype == np.uint8:
            return np.ascontiguousarray(pixels[..., :3])
        top = float(2 ** int(header.get("BitsStored", 8)) - 1)
        scaled = pixels[..., :3].astype(np.float32)
        scaled *= np.float32(255.0 / top)
        np.clip(scaled, 0, 255, out=scaled)
        return scaled.astype(np.uint8)
    values = pixels.astype(np.float32)
    slope = _first(header.get("RescaleSlope")) or 1.0
    intercept = _first(header.get("RescaleIntercept")) or 0.0
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    if window is None:
        center = _first(header.get("WindowCenter"))
        width = _first(header.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            window = Window(center, width)
    if window is None:
        low, high = float(values.min()), float(values.max())
        window = Window((low + high) / 2 + 0.5, max(high - low + 1, 1.0))
    _voi(values, window)
    if frame.photometric == "MONOCHROME1":
        np.subtract(np.float32(255.0), values, out=values)
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def _voi(x: np.ndarray[Any, Any], window: Window) -> None:
    """PS3.3 C.11.2.1.2, in place: values in [0, 255]."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        x -= np.float32(c)
        x *= np.float32(-4.0 / w)
        with np.errstate(over="ignore"):  # far below the window: exp overflows, 255/inf is 0
            np.exp(x, out=x)
        x += np.float32(1.0)
        np.divide(np.float32(255.0), x, out=x)
        return
    if window.function == "LINEAR_EXACT":
        x -= np.float32(c)
        x /= np.float32(w)
        x += np.float32(0.5)
    elif w > 1:
        x -= np.float32(c - 0.5)
        x /= np.float32(w - 1)
        x += np.float32(0.5)
    else:
        np.greater(x, np.float32(c - 0.5), out=x, casting="unsafe")
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(255.0)
