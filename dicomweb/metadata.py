"""DICOM JSON (PS3.18 Annex F) of a stored instance, with BulkDataURIs for its large values.

Built straight from the raw elements (:mod:`pacs.services.element_tree`), not through pydicom
``DataElement`` objects (about ten times faster, which is what makes a cold 600-instance series
answer in a fraction of a second). Encoding per Annex F.2:

- strings are decoded with the Specific Character Set (F.2.2), split on ``\\`` into values,
  padding removed; an empty value in a list is ``null``; an empty element has no ``Value``;
- PN values are ``{"Alphabetic", "Ideographic", "Phonetic"}`` objects (F.2.2);
- IS, DS and the binary numbers are JSON numbers (F.2.3); a malformed IS/DS stays a string,
  a NaN or infinite float is given as a string (JSON has no such numbers);
- AT values are ``"GGGGEEEE"``;
- OB, OD, OF, OL, OV, OW and UN values up to :data:`INLINE_UP_TO` bytes are ``InlineBinary``
  (base64), longer ones (and Pixel Data always) ``BulkDataURI`` (F.2.6);
- sequences are arrays of item objects; group lengths and Data Set Trailing Padding are left
  out. ``AvailableTransferSyntaxUID`` (0008,3002) tells the stored transfer syntax.

The BulkDataURI of a value is ``{base}/studies/{study}/series/{series}/instances/{instance}/
bulk/{path}``, ``path`` being its tag, or tag/item/tag... inside sequences. As the base URL
depends on how a client reached the server, the encoded bytes carry :data:`BASE_PLACEHOLDER`
instead, replaced per answer (:func:`with_base`), so that cached metadata serves any host name.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes

from pacs.services.element_tree import BINARY_VRS, PIXEL_DATA, Element
from storage.query import RetrieveItem

INLINE_UP_TO = 1024  # bytes: longer binary values become BulkDataURIs
ENCODING_VERSION = "annex-f-1"  # change when the encoding changes: cached metadata is redone
BASE_PLACEHOLDER = "\x00base\x00"
_PLACEHOLDER_JSON = json.dumps(BASE_PLACEHOLDER)[1:-1].encode("ascii")
_SPECIFIC_CHARACTER_SET = 0x00080005
_AVAILABLE_TRANSFER_SYNTAX_UID = 0x00083002
_TRAILING_PADDING = 0xFFFCFFFC
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is text there
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})  # use the character set
_STRUCTS = {
    "US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q",
}
_DEFAULT_CODECS: tuple[str, ...] = ("iso8859",)
_AVAILABLE_KEY = f"{_AVAILABLE_TRANSFER_SYNTAX_UID:08X}"
_KEYS: dict[int, str] = {}
# Strings whose values are plain text once decoded: the default repertoire ones, and the
# character-set ones when no Specific Character Set is given (LT, ST, UT, UR and PN excluded:
# one value with backslashes, or a structured name).
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_TEXT_LIST_VRS = frozenset({"LO", "SH", "UC"})


def with_base(encoded: bytes, base: str) -> bytes:
    """Encoded metadata with the placeholder replaced by the DICOMweb base URL."""
    return encoded.replace(_PLACEHOLDER_JSON, json.dumps(base)[1:-1].encode("utf-8"))


def encode_instance(item: RetrieveItem, elements: list[Element]) -> bytes:
    """One instance's DICOM JSON object, UTF-8, with :data:`BASE_PLACEHOLDER` in its URIs."""
    prefix = (
        f"{BASE_PLACEHOLDER}/studies/{item.study_instance_uid}/series/"
        f"{item.series_instance_uid}/instances/{item.sop_instance_uid}/bulk/"
    )
    codecs = _DEFAULT_CODECS
    for element in elements:
        if element.tag == _SPECIFIC_CHARACTER_SET and element.value:
            terms = [t.strip() for t in element.value.decode("ascii", "replace").split("\\")]
            codecs = tuple(convert_encodings(terms or [""]))
            break
    available = {"vr": "UI", "Value": [item.transfer_syntax_uid]}
    parts = _Encoder(prefix, codecs).top_level(elements, (_AVAILABLE_KEY, available))
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# Encoded elements by (VR, value bytes, character sets): the instances of a series share most
# of their values (patient, study, equipment, geometry), so a cold series encodes each once.
_MEMO: dict[tuple[str, bytes, tuple[str, ...]], str] = {}
_MEMO_MAX = 200_000


def _key(tag: int) -> str:
    """``GGGGEEEE``, remembered (formatting is a measurable share of a cold series)."""
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < 65536:
            _KEYS[tag] = key
    return key


class _Encoder:
    def __init__(self, prefix: str, codecs: tuple[str, ...]) -> None:
        self.prefix = prefix
        self.codecs = codecs

    def dataset(
        self, elements: list[Element], path: str, extra: tuple[str, Any] | None = None
    ) -> dict[str, Any]:
        """The item's object; ``extra`` is an element to add in its place (keys ascending)."""
        obj: dict[str, Any] = {}
        plain = self.codecs == _DEFAULT_CODECS
        for element in elements:
            tag = element.tag
            if not tag & 0xFFFF or tag == _TRAILING_PADDING:
                continue
            key = _key(tag)
            if extra is not None and key >= extra[0]:
                obj[extra[0]] = extra[1]
                extra = None
                if key == _AVAILABLE_KEY:
                    continue  # ours replaces a stored one
            vr = element.vr
            value = element.value
            if value and (vr in _ASCII_VRS or (plain and vr in _TEXT_LIST_VRS)):
                # the common case: one value of a plain string VR
                text = value.decode("latin-1")
                if "\\" not in text:
                    text = text.strip(" \x00")
                    obj[key] = {"vr": vr, "Value": [text]} if text else {"vr": vr}
                    continue
            obj[key] = self.element(element, path, key)
        if extra is not None:
            obj[extra[0]] = extra[1]
        return obj

    def top_level(self, elements: list[Element], extra: tuple[str, Any]) -> list[str]:
        """The instance's elements as ``"GGGGEEEE":{...}`` JSON texts in tag order, the same
        text :meth:`dataset` + ``json.dumps`` would give; plain values come from the memo."""
        out: list[str] = []
        pending: tuple[str, Any] | None = extra
        for element in elements:
            tag = element.tag
            if not tag & 0xFFFF or tag == _TRAILING_PADDING:
                continue
            key = _key(tag)
            if pending is not None and key >= pending[0]:
                out.append(f'"{pending[0]}":{_dumps(pending[1])}')
                pending = None
                if key == _AVAILABLE_KEY:
                    continue  # ours replaces a stored one
            value = element.value
            if value is None or element.vr == "SQ" or tag == PIXEL_DATA:
                out.append(f'"{key}":{_dumps(self.element(element, "", key))}')
                continue
            memo_key = (element.vr, value, self.codecs)
            text = _MEMO.get(memo_key)
            if text is None:
                text = _dumps(self.dataset([element], "")[key])
                if len(_MEMO) >= _MEMO_MAX:
                    _MEMO.clear()
                _MEMO[memo_key] = text
            out.append(f'"{key}":{text}')
        if pending is not None:
            out.append(f'"{pending[0]}":{_dumps(pending[1])}')
        return out

    def element(self, element: Element, path: str, key: str) -> dict[str, Any]:
        vr = element.vr
        out: dict[str, Any] = {"vr": vr}
        if vr == "SQ":
            if element.items:
                out["Value"] = [
                    self.dataset(item, f"{path}{key}/{index}/")
                    for index, item in enumerate(element.items)
                ]
            return out
        value = element.value
        if value is None or element.tag == PIXEL_DATA:
            if element.length:
                out["BulkDataURI"] = f"{self.prefix}{path}{key}"
            return out
        if not value:
            return out
        if vr in BINARY_VRS:
            out["InlineBinary"] = base64.b64encode(value).decode("ascii")
            return out
        values = self.values(vr, value)
        if values:
            out["Value"] = values
        return out

    def values(self, vr: str, raw: bytes) -> list[Any]:
        if vr in _STRUCTS:
            code = _STRUCTS[vr]
            count = len(raw) // struct.calcsize(code)
            numbers = list(struct.unpack(f"<{count}{code}", raw[: count * struct.calcsize(code)]))
            if vr in ("FL", "FD"):
                return [n if math.isfinite(n) else str(n) for n in numbers]
            return numbers
        if vr == "AT":
            count = len(raw) // 4
            pairs = struct.unpack(f"<{count * 2}H", raw[: count * 4])
            return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
        text = self.text(vr, raw)
        if vr in _SINGLE_VALUED:
            text = text.rstrip(" \x00")
            return [text] if text else []
        pieces = [p.strip(" \x00") for p in text.split("\\")]
        if len(pieces) == 1 and not pieces[0]:
            return []
        if vr == "PN":
            return [_person_name(p) for p in pieces]
        if vr == "IS":
            return [_number(p, integer=True) for p in pieces]
        if vr == "DS":
            return [_number(p, integer=False) for p in pieces]
        return [p or None for p in pieces]

    def text(self, vr: str, raw: bytes) -> str:
        if vr not in _TEXT_VRS or self.codecs == _DEFAULT_CODECS:
            return raw.decode("latin-1")
        if len(self.codecs) == 1:
            return raw.decode(self.codecs[0], "replace")
        delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
        return str(decode_bytes(raw, list(self.codecs), delimiters))


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = text.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, groups, strict=False) if group}


def _number(text: str, *, integer: bool) -> int | float | str | None:
    if not text:
        return None
    try:
        if integer:
            return int(text)
        number = float(text)
    except ValueError:
        return text  # malformed: kept as the stored text rather than lost
    if not math.isfinite(number):
        return text
    if number.is_integer() and "." not in text and "e" not in text.lower():
        return int(number)
    return number
