"""A pydicom decoder plugin: the JPEG processes (PS3.5 A.4.1: baseline, extended including
12-bit samples, lossless) through GDCM, in a child process.

GDCM is not safe on a damaged codestream: a few flipped bytes in a JPEG make it end the process
(a segmentation fault, or ``std::terminate`` on an uncaught ``gdcm::Exception``), where libjpeg
(pylibjpeg-libjpeg, GPLv3, no longer installed) raised an error. The frames a peer sent are
therefore decoded by a plain ``python -m pacs.services.gdcm_child`` process, never in the server:
a child that dies fails that one decode (an error, as for any undecodable frame) and the next
decode starts a new one. A child that reported an error is ended too: GDCM may have damaged
its memory on the way (seen: a later, valid frame crashed it). Each child serves one decode at
a time; idle ones are kept for the next, and they exit when the server closes their stdin
(when it ends, too).

pydicom's own GDCM plugin also refuses 12-bit JPEG Extended, which GDCM decodes (python-gdcm
3.2 gives the values libjpeg gives); this plugin hands it over like an 8-bit one. GDCM first
tries its 8-bit libjpeg on such a frame and writes ``Unsupported JPEG data precision 12`` to
stderr before it decodes with its 12-bit one: a diagnostic, not an error.

The protocol is :mod:`pacs.services.gdcm_child`'s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import subprocess
import sys
import threading
from typing import IO, Any

from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

#: pydicom's plugin contract: what the plugin needs, per transfer syntax
DECODER_DEPENDENCIES = dict.fromkeys(
    (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1),
    ("python-gdcm>=3.0.10",),
)
#: seconds one frame may take; then the child is ended (a codestream that loops GDCM)
DECODE_TIMEOUT = 60.0
_MAX_ANSWER_LINE = 4096


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: whether this plugin can decode ``transfer_syntax``."""
    return (transfer_syntax in DECODER_DEPENDENCIES
            and importlib.util.find_spec("gdcm") is not None)


class GdcmFailed(ValueError):
    """GDCM could not decode the frame, or its child process ended while it tried."""


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame, decoded by a GDCM child to Bits Allocated wide samples."""
    request = {
        "columns": runner.columns, "rows": runner.rows,
        "photometric_interpretation": str(runner.photometric_interpretation),
        "samples_per_pixel": runner.samples_per_pixel,
        "planar_configuration": runner.planar_configuration,
        "transfer_syntax": str.__str__(runner.transfer_syntax),
        "bits_allocated": runner.bits_allocated, "bits_stored": runner.bits_stored,
        "pixel_representation": runner.pixel_representation, "size": len(src),
    }
    child = _CHILDREN.take()
    try:
        frame = child.decode(request, src)
    except BaseException:
        # GDCM may have damaged its own memory before it reported the error (a later frame
        # then crashes it): a child that failed once decodes nothing more
        child.end()
        raise
    _CHILDREN.give_back(child)
    return frame


class _Child:
    """One ``python -m pacs.services.gdcm_child`` process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacs.services.gdcm_child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def decode(self, request: dict[str, Any], src: bytes) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n" + src)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise GdcmFailed(f"the GDCM decoder process ended: {error}") from error
        with _Reader(self.process.stdout, DECODE_TIMEOUT) as reader:
            answer = json.loads(reader.line())
            if "error" in answer:
                raise GdcmFailed(str(answer["error"]))
            return reader.exactly(int(answer["size"]))

    def alive(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class _Children:
    """The idle children, shared by the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Child] = []

    def take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
                child.end()
        return _Child()

    def give_back(self, child: _Child) -> None:
        with self._lock:
            self._idle.append(child)


_CHILDREN = _Children()


class _Reader:
    """Reads the child's answer, each read bounded by what is left of the timeout."""

    def __init__(self, stream: IO[bytes], timeout: float) -> None:
        self.fd = stream.fileno()
        self.timeout = timeout
        self.buffer = b""
        self.selector = selectors.DefaultSelector()

    def __enter__(self) -> _Reader:
        self.selector.register(self.fd, selectors.EVENT_READ)
        return self

    def __exit__(self, *exc: object) -> None:
        self.selector.close()

    def _more(self) -> None:
        if not self.selector.select(self.timeout):
            raise GdcmFailed(f"the GDCM decoder took more than {self.timeout:.0f} s")
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            raise GdcmFailed("the GDCM decoder process ended while decoding "
                             "(a damaged codestream)")
        self.buffer += chunk

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > _MAX_ANSWER_LINE:
                raise GdcmFailed("the GDCM decoder process answered nonsense")
            self._more()
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        return self.buffer[:size]
