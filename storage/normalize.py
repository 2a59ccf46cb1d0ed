"""The match form of text: case- and accent-insensitive (PN matching, PS3.4 C.2.2.2.1)."""

from __future__ import annotations

import unicodedata


def normalize_text(value: str) -> str:
    """Casefold and strip combining marks: ``Müller^Jürgen`` → ``muller^jurgen``.

    Wildcards ``*`` and ``?`` pass through, so a query pattern is normalised the same way.
    Letters that do not decompose (``ø``, ``ł``, ``ß``) are mapped by hand to their base form.
    """
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.translate(_NON_DECOMPOSING)


_NON_DECOMPOSING = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ı": "i", "æ": "ae",
                                  "œ": "oe", "ß": "ss", "þ": "th"})
