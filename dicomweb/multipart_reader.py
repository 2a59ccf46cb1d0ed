"""A streaming reader of ``multipart/related`` bodies (RFC 2387 over RFC 2046 5.1), sans I/O.

Feed it the body in chunks of any size; it returns events (a part's headers, pieces of its
content, its end) and holds back at most one delimiter's length of content plus one header
block, never a whole part: a multi-GB body is read in bounded memory. It does not read
sockets, write files or know DICOM; :mod:`dicomweb.stow` does.

Grammar (RFC 2046 5.1.1): an optional preamble, then ``--boundary`` at the start of the body
or after CRLF, transport padding (spaces, tabs) and CRLF, the part's header lines, an empty
line, the content up to ``CRLF--boundary``; after the last part ``--boundary--`` and an
epilogue, both ignored. A body that ends before the closing delimiter is truncated: that is an
error (:class:`Truncated`), as is a body without any part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

MAX_HEADER_BYTES = 16 * 1024  # one part's header block; a longer one is not a DICOMweb part
# RFC 2046 5.1.1 allows 70 characters, but real senders exceed it (Orthanc's DICOMweb plugin
# sends "<uuid>-<uuid>", 73): accept any length up to this, which still bounds what the reader
# holds back (one delimiter) and what each search scans for.
MAX_BOUNDARY_CHARS = 1000
_CRLF = b"\r\n"
_PADDING = b" \t"


class MalformedMultipart(ValueError):
    """The body is not a well-formed multipart body; the message says where."""


class Truncated(MalformedMultipart):
    """The body ended before its closing delimiter (an interrupted upload)."""


@dataclass(frozen=True)
class MediaType:
    """A media type and its parameters (RFC 9110 8.3.1), names lowercased, quotes removed."""

    type: str
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> MediaType:
        """``multipart/related; type="application/dicom"; boundary=abc`` and the like.

        Lenient as servers are: an unparsable parameter is skipped, not an error.
        """
        head, _, rest = value.partition(";")
        parameters: dict[str, str] = {}
        position = 0
        while position < len(rest):
            name_end = rest.find("=", position)
            if name_end < 0:
                break
            separator = rest.find(";", position, name_end)
            if separator >= 0:  # a parameter without "=": skipped
                position = separator + 1
                continue
            name = rest[position:name_end].strip(" \t").lower()
            parsed, position = _parameter_value(rest, name_end + 1)
            if name:
                parameters[name] = parsed
        return cls(type=head.strip().lower(), parameters=parameters)


def _parameter_value(text: str, start: int) -> tuple[str, int]:
    """A token or quoted-string starting at ``start``; returns it and where the next begins."""
    position = start
    while position < len(text) and text[position] in " \t":
        position += 1
    if position < len(text) and text[position] == '"':
        value: list[str] = []
        position += 1
        while position < len(text) and text[position] != '"':
            if text[position] == "\\" and position + 1 < len(text):
                position += 1
            value.append(text[position])
            position += 1
        end = text.find(";", position)
        return "".join(value), len(text) if end < 0 else end + 1
    end = text.find(";", position)
    if end < 0:
        return text[position:].strip(), len(text)
    return text[position:end].strip(), end + 1


@dataclass(frozen=True)
class PartStart:
    """A part begins; ``headers`` maps lowercased names to values (the last one wins)."""

    headers: dict[str, str]

    @property
    def content_type(self) -> MediaType | None:
        value = self.headers.get("content-type")
        return MediaType.parse(value) if value is not None else None


@dataclass(frozen=True)
class PartData:
    """The next piece of the current part's content (never empty)."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete: its delimiter was seen."""


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()  # the rest of the delimiter line, or "--" closing the body
    HEADERS = auto()
    CONTENT = auto()
    EPILOGUE = auto()


class MultipartReader:
    """Splits a multipart body fed in chunks into parts. Not thread-safe; one per body."""

    def __init__(self, boundary: str) -> None:
        if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS:
            raise MalformedMultipart(
                f"the boundary must be 1 to {MAX_BOUNDARY_CHARS} characters long"
            )
        try:
            # The body starts as if after a CRLF, so a delimiter at its very start is found
            # by the same search as every later one.
            self._delimiter = _CRLF + b"--" + boundary.encode("ascii")
        except UnicodeEncodeError as exc:
            raise MalformedMultipart("the boundary is not ASCII") from exc
        self._buffer = bytearray(_CRLF)
        self._state = _State.PREAMBLE
        self._parts = 0

    @property
    def parts(self) -> int:
        """How many parts have begun so far."""
        return self._parts

    @property
    def held_back(self) -> int:
        """Bytes kept between calls to :meth:`feed`, waiting for more input: at most one
        delimiter line or one header block, however long the body or its parts."""
        return len(self._buffer)

    @property
    def complete(self) -> bool:
        """Whether the closing delimiter has been read."""
        return self._state is _State.EPILOGUE

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes, in order."""
        if self._state is _State.EPILOGUE:
            return []
        self._buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body has ended: raises :class:`Truncated` unless it was complete."""
        if self._state is not _State.EPILOGUE:
            where = {
                _State.PREAMBLE: "before its first delimiter",
                _State.AFTER_DELIMITER: "inside a delimiter line",
                _State.HEADERS: "inside a part's headers",
                _State.CONTENT: "inside a part's content",
            }[self._state]
            raise Truncated(
                f"the multipart body ended {where}, without its closing delimiter "
                f"(after {self._parts} part(s))"
            )

    # -- one transition at a time; False when more input is needed ----------------------
    def _step(self, events: list[Event]) -> bool:
        if self._state is _State.PREAMBLE:
            return self._preamble()
        if self._state is _State.AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._headers(events)
        if self._state is _State.CONTENT:
            return self._content(events)
        self._buffer.clear()  # the epilogue is ignored
        return False

    def _preamble(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            keep = len(self._delimiter) - 1  # a delimiter may straddle this chunk and the next
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[: found + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            if self._parts == 0:
                raise MalformedMultipart("the multipart body has no parts")
            self._state = _State.EPILOGUE
            self._buffer.clear()
            return False
        line_end = self._buffer.find(_CRLF)
        if line_end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MalformedMultipart("a delimiter line does not end")
            return False
        if self._buffer[:line_end].strip(_PADDING):
            raise MalformedMultipart("text follows a boundary delimiter on its line")
        del self._buffer[: line_end + len(_CRLF)]
        self._state = _State.HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        if self._buffer.startswith(_CRLF):  # no header lines at all
            block, consumed = b"", len(_CRLF)
        else:
            end = self._buffer.find(_CRLF + _CRLF)
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise MalformedMultipart(
                        f"a part's headers exceed {MAX_HEADER_BYTES} bytes or do not end"
                    )
                return False
            block, consumed = bytes(self._buffer[:end]), end + 2 * len(_CRLF)
        if consumed - len(_CRLF) > MAX_HEADER_BYTES:
            raise MalformedMultipart(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
        del self._buffer[:consumed]
        events.append(PartStart(_parse_headers(block)))
        self._parts += 1
        self._state = _State.CONTENT
        return True

    def _content(self, events: list[Event]) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                events.append(PartData(bytes(self._buffer[:cut])))
                del self._buffer[:cut]
            return False
        if found:
            events.append(PartData(bytes(self._buffer[:found])))
        events.append(PartEnd())
        del self._buffer[: found + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True


def _parse_headers(block: bytes) -> dict[str, str]:
    """Header lines (RFC 5322 2.2, folded lines unfolded); a line without a colon is an error."""
    headers: dict[str, str] = {}
    text = block.decode("latin-1")
    name = ""
    for line in text.split("\r\n") if text else ():
        if line[:1] in (" ", "\t") and name:  # obsolete folding: a continuation
            headers[name] = f"{headers[name]} {line.strip()}"
            continue
        field_name, colon, value = line.partition(":")
        if not colon or not field_name.strip():
            raise MalformedMultipart(f"not a header line in a part: {line[:80]!r}")
        name = field_name.strip().lower()
        headers[name] = value.strip()
    return headers
