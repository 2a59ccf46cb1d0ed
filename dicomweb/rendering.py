"""Rendered and thumbnail images (PS3.18 8.3.5, 9.1.2 for WADO-URI) of a decoded frame.

Grayscale: Modality LUT (Rescale Slope/Intercept, PS3.3 C.11.1), then the VOI window (PS3.3
C.11.2.1.2): the ``window`` query parameter, else the first Window Center/Width of the data
set, else the frame's minimum and maximum; LINEAR, LINEAR_EXACT or SIGMOID; MONOCHROME1 is
inverted. Color frames are shown as decoded (RGB; YBR was converted by the decoder), scaled to
8 bits when stored wider. A viewport (``vw,vh``) scales the image to fit inside it, aspect
ratio kept, never below one pixel. Not done: presentation states, VOI LUT sequences, per-frame
functional groups, annotations, cropping (``sx,sy,sw,sh``) and ``image/gif``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pacs.services.frames import DecodedFrame

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
THUMBNAIL_SIZE = 128  # pixels: the longer side of a thumbnail without a viewport
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


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
    image = Image.fromarray(_eight_bits(frame, options.window))
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


def _eight_bits(frame: DecodedFrame, window: Window | None) -> np.ndarray[Any, Any]:
    pixels = frame.pixels
    header = frame.header
    if pixels.ndim == 3:  # color: samples last
        if pixels.dtype != np.uint8:
            top = float(2 ** int(header.get("BitsStored", 8)) - 1)
            pixels = np.clip(pixels.astype(np.float64) * (255.0 / top), 0, 255)
        return np.ascontiguousarray(pixels.astype(np.uint8)[..., :3])
    values = pixels.astype(np.float64)
    slope = _first(header.get("RescaleSlope")) or 1.0
    intercept = _first(header.get("RescaleIntercept")) or 0.0
    values = values * slope + intercept
    if window is None:
        center = _first(header.get("WindowCenter"))
        width = _first(header.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            window = Window(center, width)
    if window is None:
        low, high = float(values.min()), float(values.max())
        window = Window((low + high) / 2 + 0.5, max(high - low + 1, 1.0))
    out = _voi(values, window)
    if frame.photometric == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _voi(x: np.ndarray[Any, Any], window: Window) -> np.ndarray[Any, Any]:
    """PS3.3 C.11.2.1.2: values in [0, 255]."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        result: np.ndarray[Any, Any] = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        return result
    if window.function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0) * 255.0
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0 if w > 1 else np.where(
        x > c - 0.5, 255.0, 0.0
    )
