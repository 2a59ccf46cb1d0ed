"""Q/R Identifiers ⇄ the query model (PS3.4 C.4.1.2, C.4.2.2, C.6.1, C.6.2).

A C-FIND Identifier becomes a :class:`storage.query.Query` after the hierarchical checks of
C.4.1.2.1 (level present and allowed in the information model, the unique keys of the levels
above present with one value, no matching keys below the level); a match becomes a response
Identifier carrying every requested key, empty when unknown. C-MOVE and C-GET Identifiers
(C.4.2.2.1) name the entities by their unique keys only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacs.services.errors import InvalidQuery
from storage.attributes import BY_KEYWORD, DEPTH, Level
from storage.query import (
    SEQUENCES,
    UNIQUE_KEYS,
    Computed,
    Condition,
    InvalidQueryValue,
    Query,
    condition,
    is_matchable,
    sequence_condition,
    vr_of,
)


class InformationModel(StrEnum):
    """Q/R information models, PS3.4 C.6."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


class IdentifierMismatch(InvalidQuery):
    """The Identifier breaks the hierarchical rules of its model (status 0xA900)."""


# SOP Class UID → (information model, DIMSE service), PS3.4 C.6.1.3, C.6.2.3
FIND_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": InformationModel.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": InformationModel.STUDY_ROOT,
}
MOVE_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.2": InformationModel.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": InformationModel.STUDY_ROOT,
}
GET_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.3": InformationModel.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": InformationModel.STUDY_ROOT,
}

LEVELS: dict[InformationModel, tuple[Level, ...]] = {
    InformationModel.PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    InformationModel.STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE),
}

# The unique key of each level (C.6.1.1.1, C.6.2.1.1): the last of its chain of unique keys.
UNIQUE_KEY = {level: keys[-1] for level, keys in UNIQUE_KEYS.items()}

# Keys that describe the response, not the entities (never matched).
_RESPONSE_ONLY = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
     "TimezoneOffsetFromUTC", "QueryRetrieveView"}
)
_COMPUTED = frozenset(str(key) for key in Computed)


@dataclass(frozen=True)
class FindRequest:
    query: Query
    requested: tuple[str, ...]  # every keyword of the request, in its order, for the response
    sequences: tuple[str, ...]  # requested sequence keywords (returned empty)


def level_of(identifier: Dataset, model: InformationModel) -> Level:
    """The QueryRetrieveLevel (0008,0052), checked against the model (C.4.1.2.1)."""
    text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not text:
        raise IdentifierMismatch("Query/Retrieve Level (0008,0052) is missing")
    try:
        level = Level(text)
    except ValueError:
        raise IdentifierMismatch(f"Query/Retrieve Level {text!r} is not valid") from None
    if level not in LEVELS[model]:
        raise IdentifierMismatch(f"level {text} is not part of the {_model_name(model)} model")
    return level


def find_request(
    identifier: Dataset, model: InformationModel, *, fuzzy_person_names: bool = True
) -> FindRequest:
    """A C-FIND Identifier as a query (hierarchical search, C.4.1.2.1)."""
    level = level_of(identifier, model)
    conditions: list[Condition] = []
    requested: list[str] = []
    sequences: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or element.tag.group in (0x0000, 0x0002):
            continue
        requested.append(keyword)
        if keyword in _RESPONSE_ONLY:
            continue
        key_level = _level_of_key(keyword, model)
        if element.VR == "SQ":
            found = _sequence(element)
            if found is not None:
                _check_not_below(keyword, key_level, level)
                conditions.append(found)
            sequences.append(keyword)
            continue
        if not is_matchable(keyword):
            continue  # returned empty: not indexed
        text = element_text(element)
        try:
            found = condition(keyword, text, vr_of(keyword))
        except InvalidQueryValue as error:
            raise InvalidQuery(str(error)) from None
        if found is None:
            continue
        _check_not_below(keyword, key_level, level)
        conditions.append(found)
    _check_unique_keys_above(identifier, model, level)
    return_keys = tuple(k for k in requested if k in BY_KEYWORD or k in _COMPUTED)
    query = Query(
        level=level,
        conditions=tuple(conditions),
        return_keys=return_keys,
        fuzzy_person_names=fuzzy_person_names,
    )
    return FindRequest(query, tuple(dict.fromkeys(requested)), tuple(sequences))


def retrieve_query(identifier: Dataset, model: InformationModel) -> Query:
    """A C-MOVE / C-GET Identifier (C.4.2.2.1): unique keys of the level and above; the
    level's own key may list several UIDs."""
    level = level_of(identifier, model)
    conditions: list[Condition] = []
    for upper in LEVELS[model]:
        keyword = UNIQUE_KEY[upper]
        text = element_text(identifier[keyword]) if keyword in identifier else ""
        if upper is level and not text.strip():
            raise IdentifierMismatch(f"{keyword} is required to retrieve at the {level} level")
        if not text.strip():
            continue
        try:
            found = condition(keyword, text, vr_of(keyword))
        except InvalidQueryValue as error:
            raise InvalidQuery(str(error)) from None
        if found is not None:
            conditions.append(found)
        if upper is level:
            break
    return Query(level=level, conditions=tuple(conditions))


def response(
    row: dict[str, Any], request: FindRequest, *, ae_title: str
) -> tuple[list[tuple[str, Any]], str | None]:
    """The C-FIND response Identifier for one match (C.4.1.2.3) as (keyword, value) pairs,
    and its Specific Character Set: ``ISO_IR 192`` when a value is not ASCII, else empty when
    the request asked for it, else None (left out)."""
    values: dict[str, Any] = {}
    for keyword in request.requested:
        if keyword == "SpecificCharacterSet":
            continue
        if keyword == "QueryRetrieveLevel":
            value: Any = str(request.query.level)
        elif keyword == "RetrieveAETitle":
            value = ae_title
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        elif keyword in request.sequences:
            value = []
        else:
            value = row.get(keyword)
        values[keyword] = value
    for keyword in UNIQUE_KEYS[request.query.level]:
        if keyword not in values and row.get(keyword) is not None:
            values[keyword] = row[keyword]
    values.setdefault("QueryRetrieveLevel", str(request.query.level))
    if any(_is_non_ascii(v) for v in values.values()):
        return list(values.items()), "ISO_IR 192"
    # asked for but not needed: present and empty (the default repertoire)
    return list(values.items()), ("" if "SpecificCharacterSet" in request.requested else None)


def _is_non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, list):
        return any(_is_non_ascii(v) for v in value)
    return False


def element_text(element: DataElement) -> str:
    """An identifier element's value as the text a matcher parses (multiple values joined
    by backslashes, bytes as Latin-1)."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin_1")
    return str(value)


def _sequence(element: DataElement) -> Condition | None:
    """Sequence matching (C.2.2.2.6): the first item's non-empty keys."""
    if element.keyword not in SEQUENCES:
        return None
    items = list(element.value or [])
    if not items:
        return None
    item_conditions: list[Condition] = []
    for item_element in items[0]:
        keyword = item_element.keyword
        if keyword not in SEQUENCES[element.keyword]:
            continue
        try:
            found = condition(keyword, element_text(item_element), vr_of(keyword))
        except InvalidQueryValue as error:
            raise InvalidQuery(str(error)) from None
        if found is not None:
            item_conditions.append(found)
    try:
        return sequence_condition(element.keyword, tuple(item_conditions))
    except InvalidQueryValue as error:
        raise InvalidQuery(str(error)) from None


def _level_of_key(keyword: str, model: InformationModel) -> Level | None:
    """The level a key belongs to in ``model`` (patient keys are study keys in Study Root)."""
    if keyword in _COMPUTED:
        level = Computed(keyword).level
    elif keyword in BY_KEYWORD:
        level = BY_KEYWORD[keyword].level
    elif keyword in SEQUENCES:
        level = Level.SERIES
    else:
        return None
    if model is InformationModel.STUDY_ROOT and level is Level.PATIENT:
        return Level.STUDY
    return level


def _check_not_below(keyword: str, key_level: Level | None, level: Level) -> None:
    """C.4.1.2.1: no matching keys below the query level (empty ones are ignored)."""
    if key_level is not None and DEPTH[key_level] > DEPTH[level]:
        raise IdentifierMismatch(f"{keyword} is a {key_level} key, below the {level} level")


def _check_unique_keys_above(
    identifier: Dataset, model: InformationModel, level: Level
) -> None:
    """C.4.1.2.1: each level above the query level is named by its unique key, one value."""
    for upper in LEVELS[model]:
        if DEPTH[upper] >= DEPTH[level]:
            break
        keyword = UNIQUE_KEY[upper]
        text = element_text(identifier[keyword]).strip() if keyword in identifier else ""
        if not text:
            raise IdentifierMismatch(
                f"{keyword} must be given to query at the {level} level "
                f"({_model_name(model)}, hierarchical search)"
            )
        if "\\" in text or "*" in text or "?" in text:
            raise IdentifierMismatch(f"{keyword} must be a single value above the query level")


def _model_name(model: InformationModel) -> str:
    return "Patient Root" if model is InformationModel.PATIENT_ROOT else "Study Root"
