"""Bounds on decoding: what one decode may allocate, and how many run at once.

Every path that turns stored bytes into pixels or inflates a deflated data set (rendered and
thumbnail images, decoded frames, transcoding for C-MOVE / C-GET / WADO-RS / routing, the
stability pixel check, deflated ingest) asks :class:`DecodeLimits` first:

- :meth:`DecodeLimits.check` computes the decoded size from the header alone (PS3.3 C.7.6.3:
  Rows × Columns × Samples per Pixel × Bits Allocated / 8 × frames decoded, plus what the
  caller says it needs per decoded sample on top, e.g. a rendering's working copies) and
  raises :class:`DecodeTooLarge` when it is over the limit. A header never decides how much
  is allocated without this check: a 16000 × 16000 image is a few kB of RLE.
- :meth:`DecodeLimits.slot` bounds the decodes running at once (a bounded semaphore per
  process); a decode that waits longer than ``wait_seconds`` for a slot raises
  :class:`DecoderBusy` (HTTP 503 with Retry-After, DIMSE 0xA700 or a failed sub-operation).
- :meth:`DecodeLimits.inflate` inflates a deflated data set (PS3.5 A.5) incrementally and
  stops as soon as it grows beyond the limit, so the inflated copy never exceeds it.

- :func:`check_codestream` reads the frame size a JPEG, JPEG-LS or JPEG 2000 codestream
  declares (its SOF or SIZ marker segment): the decoder plugins allocate what the codestream
  says, not what the header says, so a codestream larger than the header is refused.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pacs.services.errors import CannotTranscode, DecoderBusy, DecodeTooLarge

MB = 1 << 20  # the unit of PACS_MAX_DECODED_MB
_INFLATE_STEP = 1 << 20  # bytes of inflated output asked of zlib at a time
_MAX_SAMPLES = 4  # PS3.3 C.7.6.3.1.1: 1 or 3 (4 in retired ARGB/CMYK)
_MAX_BITS = 64  # PS3.3 C.7.6.3.1.1: Bits Allocated 1, 8, 16, 32 or 64 in practice
#: Bytes per decoded sample that viewing a frame may take beyond the frame itself: rendering's
#: float32 working copy, its 8-bit result and Pillow's copy of that (dicomweb.rendering). The
#: stability pixel check uses the same budget: a frame too large to view is not judged either.
VIEWING_EXTRA_PER_SAMPLE = 6
_SCAN = 1 << 16  # bytes of a codestream searched for its frame header
# ISO 10918-1 B.1.1.3 and ISO 14495-1 (SOF55): start-of-frame markers; C4, C8, CC are not
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_J2K_SIZ = b"\xff\x4f\xff\x51"  # ISO 15444-1 A.4.1, A.5.1: SOC then SIZ


class GeometryError(ValueError):
    """The header's image geometry is missing or not a usable number."""


@dataclass(frozen=True)
class Geometry:
    """The Image Pixel module's size of one frame and the number of frames (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int

    @classmethod
    def of(cls, header: Any) -> Geometry:
        """From a pydicom data set (or anything with ``get``); :class:`GeometryError` when a
        value is missing, not a number, or outside what the standard allows (US values are
        at most 65535; Number of Frames is an IS, so it is checked, not trusted)."""
        return cls(
            rows=_number(header, "Rows", 1, 0xFFFF),
            columns=_number(header, "Columns", 1, 0xFFFF),
            samples_per_pixel=_number(header, "SamplesPerPixel", 1, _MAX_SAMPLES, default=1),
            bits_allocated=_number(header, "BitsAllocated", 1, _MAX_BITS),
            number_of_frames=frame_count(header),
        )

    @property
    def samples_per_frame(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame (whole bytes per sample, as decoders give them)."""
        return self.samples_per_frame * -(-self.bits_allocated // 8)


def codestream_size(frame: bytes | memoryview) -> tuple[int, int, int] | None:
    """(columns, rows, components) a JPEG, JPEG-LS or JPEG 2000 codestream declares, from its
    SOF (ISO 10918-1 B.2.2, 14495-1 C.2.2) or SIZ (15444-1 A.5.1) marker segment; None when
    none is found in its first 64 KiB (then the decoder judges)."""
    head = bytes(frame[:_SCAN])
    if not head.startswith(b"\xff\xd8"):  # not JPEG: a J2K codestream, maybe in a JP2 box
        at = head.find(_J2K_SIZ)
        if at < 0 or at + 42 > len(head):
            return None
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", head, at + 8)
        (components,) = struct.unpack_from(">H", head, at + 40)
        return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0), components
    position = 2
    while position + 4 <= len(head):
        if head[position] != 0xFF:
            return None
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack_from(">H", head, position + 2)
        if marker in _SOF and position + 10 <= len(head):
            rows, columns = struct.unpack_from(">HH", head, position + 5)
            return columns, rows, head[position + 9]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + length
    return None


def check_codestream(frame: bytes | memoryview, geometry: Geometry, *, what: str) -> None:
    """:class:`CannotTranscode` when ``frame``'s codestream declares more samples than the
    header's Rows x Columns x Samples per Pixel (the decoder would allocate for them)."""
    declared = codestream_size(frame)
    if declared is None:
        return
    columns, rows, components = declared
    if columns * rows * components > geometry.samples_per_frame:
        raise CannotTranscode(
            f"{what}: the codestream declares {columns}x{rows} x {components} component(s), "
            f"more than the header's {geometry.columns}x{geometry.rows} x "
            f"{geometry.samples_per_pixel}"
        )


def frame_count(header: Any) -> int:
    """Number of Frames (an IS, so checked: 1 when absent, :class:`GeometryError` when not a
    whole number from 1 to 2^31 - 1)."""
    return _number(header, "NumberOfFrames", 1, 2**31 - 1, default=1)


def _number(header: Any, keyword: str, low: int, high: int, default: int | None = None) -> int:
    value = header.get(keyword)
    if value is None or value == "":
        if default is None:
            raise GeometryError(f"{keyword} is missing")
        return default
    if isinstance(value, list | tuple):  # a multi-valued element: only the first counts
        value = value[0] if value else None
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise GeometryError(f"{keyword} {str(value)[:32]!r} is not a whole number") from None
    if not low <= number <= high:
        raise GeometryError(f"{keyword} {number} is outside {low}..{high}")
    return number


class DecodeLimits:
    """The decoding budget of one process: ``max_decoded_bytes`` per decode, at most
    ``max_concurrent`` decodes at once. Thread-safe."""

    def __init__(
        self, *, max_decoded_bytes: int, max_concurrent: int, wait_seconds: float = 30.0
    ) -> None:
        self.max_decoded_bytes = max_decoded_bytes
        self.max_concurrent = max_concurrent
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @classmethod
    def unlimited(cls) -> DecodeLimits:
        """For tools and tests that build services without settings."""
        return cls(max_decoded_bytes=1 << 62, max_concurrent=1 << 16)

    def check(
        self, geometry: Geometry, *, frames: int, what: str, extra_per_sample: int = 0
    ) -> int:
        """The bytes ``frames`` decoded frames of ``geometry`` need (``extra_per_sample``
        more per sample for the caller's working copies); :class:`DecodeTooLarge`, naming
        ``what``, when over the limit."""
        needed = geometry.frame_bytes * frames + geometry.samples_per_frame * frames * (
            extra_per_sample
        )
        if needed > self.max_decoded_bytes:
            raise DecodeTooLarge(
                f"{what}: decoding {frames} frame(s) of {geometry.columns}x{geometry.rows} "
                f"x {geometry.samples_per_pixel} sample(s) of {geometry.bits_allocated} bits "
                f"would take {_mb(needed)} MB, above the limit of "
                f"{_mb(self.max_decoded_bytes)} MB"
            )
        return needed

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the decoding slots while the block runs (waits up to ``wait_seconds``
        for one, then :class:`DecoderBusy`)."""
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise DecoderBusy(
                f"the server is busy decoding ({self.max_concurrent} at a time): "
                f"try again shortly"
            )
        try:
            yield
        finally:
            self._slots.release()

    def inflate(
        self, deflated: bytes | memoryview, *, what: str,
        too_large: Callable[[str], Exception] = DecodeTooLarge,
        corrupt: Callable[[str], Exception] = ValueError, keep: bool = True,
    ) -> bytes:
        """The raw deflate stream ``deflated`` (PS3.5 A.5: no zlib header) inflated, in steps
        of at most 1 MiB; ``too_large(message)`` (naming ``what``) is raised as soon as the
        output passes the limit, so at most the limit is held (twice, briefly, while the
        pieces are joined). A corrupt or unterminated stream raises ``corrupt(reason)``. With
        ``keep=False`` the output is only measured (and ``b""`` returned)."""
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pieces: list[bytes] = []
        size = 0
        pending: bytes | memoryview = deflated
        try:
            while True:
                piece = inflater.decompress(pending, _INFLATE_STEP)
                size += len(piece)
                if size > self.max_decoded_bytes:
                    raise too_large(
                        f"{what} inflates beyond the limit of {_mb(self.max_decoded_bytes)} MB"
                    )
                if keep:
                    pieces.append(piece)
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and not piece):
                    break
        except zlib.error as error:
            raise corrupt(f"corrupt deflate stream: {error}") from error
        if not inflater.eof:
            raise corrupt("the deflate stream does not end (truncated)")
        return b"".join(pieces)


def _mb(size: int) -> int:
    return -(-size // MB)
