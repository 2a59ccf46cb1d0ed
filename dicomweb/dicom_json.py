"""Query results as DICOM JSON (PS3.18 Annex F): ``{"0020000D": {"vr": "UI", "Value": [...]}}``.

Values come from the index as text, numbers or lists (``Repository.find``); this module knows
each keyword's VR and writes the Annex F form: PN as ``{"Alphabetic": ...}`` objects (F.2.2),
IS/DS/US and the computed counts as JSON numbers (F.2.3), multi-valued text split at ``\\``,
an unknown value as an attribute with no ``Value`` (F.2.5).
"""

from __future__ import annotations

from typing import Any

from pydicom.tag import Tag

from storage.query import Computed, vr_of

_COMPUTED_VR = {
    Computed.ModalitiesInStudy: "CS",
    Computed.SOPClassesInStudy: "UI",
}
EXTRA_VR = {"RetrieveURL": "UR", "InstanceAvailability": "CS", "SpecificCharacterSet": "CS"}
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
_NUMBERS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def vr(keyword: str) -> str:
    if keyword in EXTRA_VR:
        return EXTRA_VR[keyword]
    if keyword in _COMPUTED_VR:
        return _COMPUTED_VR[Computed(keyword)]
    if keyword.startswith("NumberOf"):
        return "IS"
    found = vr_of(keyword)
    return found or "UN"


_TAGS: dict[str, str] = {}


def tag_of(keyword: str) -> str:
    """``PatientName`` → ``00100010``."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = f"{int(Tag(keyword)):08X}"
    return tag


def element(keyword: str, value: Any) -> dict[str, Any]:
    """One attribute's Annex F object."""
    value_representation = vr(keyword)
    values = _values(value, value_representation)
    if not values:
        return {"vr": value_representation}
    return {"vr": value_representation, "Value": values}


def _values(value: Any, value_representation: str) -> list[Any]:
    if value is None or value == "" or value == []:
        return []
    items: list[Any] = list(value) if isinstance(value, list | tuple) else [value]
    if value_representation not in _SINGLE_VALUED:
        split: list[Any] = []
        for item in items:
            split += item.split("\\") if isinstance(item, str) else [item]
        items = split
    if value_representation == "PN":
        return [_person_name(str(item)) for item in items]
    if value_representation in _NUMBERS:
        return [_number(item, value_representation) for item in items]
    return [str(item) for item in items]


def _person_name(text: str) -> dict[str, str]:
    """F.2.2: the component groups of a PN value (alphabetic=ideographic=phonetic)."""
    return {group: part for group, part in zip(_PN_GROUPS, text.split("="), strict=False)
            if part}


def _number(item: Any, value_representation: str) -> int | float | str | None:
    if isinstance(item, int | float):
        return item
    text = str(item).strip()
    if not text:
        return None
    try:
        return int(text) if value_representation in {"IS", "US", "SS", "UL", "SL"} else float(text)
    except ValueError:
        return text  # kept as received rather than lost


def dataset(values: dict[str, Any]) -> dict[str, Any]:
    """keyword → value as one Annex F object, keys in tag order; SpecificCharacterSet
    ``ISO_IR 192`` is added when a text value is not ASCII (JSON is UTF-8 either way)."""
    if any(_is_non_ascii(v) for v in values.values()):
        values = {**values, "SpecificCharacterSet": "ISO_IR 192"}
    items = sorted(((tag_of(k), k, v) for k, v in values.items()), key=lambda item: item[0])
    return {tag: element(keyword, value) for tag, keyword, value in items}


def _is_non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, list):
        return any(_is_non_ascii(v) for v in value)
    return False
