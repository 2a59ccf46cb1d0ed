"""The ``Accept`` header as an ordered list of media ranges (RFC 9110 12.5.1, PS3.18 8.7).

Ranges are ordered by q-value, highest first, keeping the client's order among equals;
ranges with ``q=0`` are dropped (not acceptable). Parameter names are lower-cased, values
unquoted: ``multipart/related; type="application/dicom"; transfer-syntax=*`` gives
``MediaRange("multipart/related", {"type": "application/dicom", "transfer-syntax": "*"})``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRange:
    media_type: str  # lower case, e.g. "multipart/related", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range covers ``media_type`` (``*/*``, ``image/*`` or exact)."""
        if self.media_type in ("*/*", "*"):
            return True
        kind, _, sub = self.media_type.partition("/")
        return sub == "*" and media_type.startswith(kind + "/") or self.media_type == media_type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


ANY = MediaRange("*/*")


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable media ranges, best first; ``[*/*]`` for a missing or empty header."""
    if header is None or not header.strip():
        return [ANY]
    ranges: list[MediaRange] = []
    for text in _split(header, ","):
        pieces = _split(text, ";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"').strip()
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name:
                params[name] = value.lower() if name == "type" else value
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)
