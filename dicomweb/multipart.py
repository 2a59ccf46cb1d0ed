"""Streaming ``multipart/related`` writer (RFC 2387, PS3.18 8.7.1.2).

Each part is written as its headers, then its body chunks as they come: a study is never held
in memory. When every part's size is known in advance (stored files sent unchanged), the total
length is known too and the answer can carry ``Content-Length``; otherwise it is chunked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type, optional Content-Location, and its bytes."""

    content_type: str
    chunks: Iterable[bytes]
    size: int | None = None  # bytes of the body, when known before it is read
    location: str | None = None


def new_boundary() -> str:
    """A boundary that cannot occur in a DICOM file by chance (RFC 2046 5.1.1: ≤ 70 chars)."""
    return f"pacs-{uuid.uuid4().hex}"


def content_type(boundary: str, part_type: str) -> str:
    """The answer's Content-Type: ``multipart/related; type="…"; boundary=…``."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def _head(boundary: str, part: Part) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {part.content_type}"]
    if part.location is not None:
        lines.append(f"Content-Location: {part.location}")
    if part.size is not None:
        lines.append(f"Content-Length: {part.size}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _tail(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def stream(boundary: str, parts: Iterable[Part]) -> Iterator[bytes]:
    """The body: each part's head, then its chunks, then the close delimiter.

    Parts are pulled one at a time, so a generator of parts may open each file only when
    its turn comes (and close it before the next).
    """
    first = True
    for part in parts:
        yield _head(boundary, part) if first else b"\r\n" + _head(boundary, part)
        first = False
        for chunk in part.chunks:
            if chunk:
                yield chunk
    if first:  # no part at all: still a valid (empty) multipart body
        yield f"--{boundary}--\r\n".encode("ascii")
        return
    yield _tail(boundary)


def total_length(boundary: str, parts: Iterable[Part]) -> int | None:
    """The body length of :func:`stream` over ``parts``, or None when a part's size is unknown."""
    total = 0
    count = 0
    for part in parts:
        if part.size is None:
            return None
        total += len(_head(boundary, part)) + part.size + (2 if count else 0)
        count += 1
    return total + (len(_tail(boundary)) if count else len(f"--{boundary}--\r\n"))
