"""A QIDO-RS query string as a :class:`storage.query.Query` (PS3.18 8.3.4, 10.6.1).

``{attributeID}={value}`` with a keyword (``PatientName``), a tag (``00100010``) or a sequence
path (``RequestAttributesSequence.RequestedProcedureID``); ``includefield`` (repeated, comma
separated, or ``all``), ``fuzzymatching``, ``limit``, ``offset``. UID and CS values may list
several values separated by ``,`` or ``\\`` (list matching).

Two kinds of trouble, as PS3.18 8.3.4 and 10.6.1.2 want them told apart:

* a parameter the server does not support (an unknown name, an attribute the index cannot
  match on or return) is **ignored**, and named in a ``Warning: 299`` header;
* a malformed value of a supported parameter (``limit=abc``, a bad date range, a UID with
  letters) is an error: :class:`InvalidQuery` (400).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword

from pacs.services.errors import InvalidQuery
from storage.attributes import BY_KEYWORD, DEPTH, Level
from storage.query import (
    SEQUENCES,
    Computed,
    Condition,
    InvalidQueryValue,
    Query,
    condition,
    is_matchable,
    sequence_condition,
    vr_of,
)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_IGNORED_QUIETLY = frozenset({"_"})  # cache busters some HTTP clients add


class Resource(Enum):
    """The QIDO-RS resources (PS3.18 Table 10.6.1-2) with the level they search."""

    STUDIES = (Level.STUDY, ())
    SERIES = (Level.SERIES, (Level.STUDY,))  # /series: every study, study attributes too
    STUDY_SERIES = (Level.SERIES, ())
    INSTANCES = (Level.IMAGE, (Level.STUDY, Level.SERIES))
    STUDY_INSTANCES = (Level.IMAGE, (Level.SERIES,))
    SERIES_INSTANCES = (Level.IMAGE, ())

    @property
    def level(self) -> Level:
        level: Level = self.value[0]
        return level

    @property
    def also(self) -> tuple[Level, ...]:
        """Levels whose default attributes are returned too (PS3.18 10.6.3.3)."""
        levels: tuple[Level, ...] = self.value[1]
        return levels


DEFAULT_KEYS: dict[Level, tuple[str, ...]] = {
    # PS3.18 Table 10.6.3-3, plus StudyDescription, which every study list shows
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "StudyDescription",
    ),
    # Table 10.6.3-4
    Level.SERIES: (
        "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
        "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "SeriesDate",
        "SeriesTime", "BodyPartExamined", "StudyInstanceUID",
    ),
    # Table 10.6.3-5
    Level.IMAGE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
        "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
        "StudyInstanceUID", "SeriesInstanceUID",
    ),
}
FORMATTED = frozenset({"RetrieveURL", "InstanceAvailability"})
"""Returned keys the front end fills in itself (not index columns)."""


@dataclass(frozen=True)
class QidoRequest:
    query: Query
    returned: tuple[str, ...]  # keywords in the answer, besides the unique keys
    warnings: tuple[str, ...]  # ignored parameters, for Warning: 299 headers
    capped: bool  # whether the server's result cap applies


def parse(
    resource: Resource,
    params: Iterable[tuple[str, str]],
    *,
    path: dict[str, str] | None = None,
    fuzzy_default: bool = True,
) -> QidoRequest:
    """The query of one QIDO-RS request; ``path`` holds the UIDs of the URL."""
    level = resource.level
    warnings: list[str] = []
    values: dict[str, list[str]] = {}
    includes: list[str] = []
    limit: int | None = None
    offset = 0
    fuzzy = fuzzy_default
    for name, value in params:
        if name == "limit":
            limit = _count("limit", value)
        elif name == "offset":
            offset = _count("offset", value)
        elif name == "fuzzymatching":
            # true asks for the case- and accent-insensitive PN matching even where the server
            # matches names exactly; false keeps the server's own PN matching (folding case
            # is not the "fuzzy semantic matching" PS3.18 8.3.4.5 lets a client turn off)
            requested = _boolean(name, value)
            fuzzy = fuzzy_default or requested
        elif name == "includefield":
            includes += [item.strip() for item in value.split(",") if item.strip()]
        elif name in _IGNORED_QUIETLY:
            continue
        else:
            values.setdefault(name, []).append(value)
    conditions: list[Condition] = []
    matched: list[str] = []
    for keyword, uid in (path or {}).items():
        conditions.append(_uid_condition(keyword, uid))
    sequences: dict[str, list[Condition]] = {}
    for name, given in values.items():
        keywords, problem = _resolve(name)
        if problem:
            warnings.append(f"{name}: {problem}; the parameter was ignored")
            continue
        if len(given) > 1 and vr_of(keywords[-1]) not in {"UI", "CS"}:
            warnings.append(f"{name}: given {len(given)} times; only the first value was used")
            given = given[:1]
        text = "\\".join(given)
        if len(keywords) == 2:
            found = _condition(keywords[1], text)
            if found is not None:
                sequences.setdefault(keywords[0], []).append(found)
            continue
        keyword = keywords[0]
        if path and keyword in path:
            warnings.append(f"{name}: already given in the URL; the parameter was ignored")
            continue
        found = _condition(keyword, text)
        if found is not None:
            conditions.append(found)
        matched.append(keyword)
    for keyword, items in sequences.items():
        try:
            found = sequence_condition(keyword, tuple(items))
        except InvalidQueryValue as error:
            raise InvalidQuery(str(error)) from None
        if found is not None:
            conditions.append(found)
    returned = list(DEFAULT_KEYS[level])
    for also in resource.also:
        returned += DEFAULT_KEYS[also]
    returned += [keyword for keyword in matched if _returnable(keyword, level)]
    for include in includes:
        if include == "all":
            returned += _all_keys(level)
            continue
        named = _keyword(include)
        if named is not None and (_returnable(named, level) or named in FORMATTED):
            returned.append(named)
        else:
            reason = ("not a DICOM attribute keyword or tag" if named is None
                      else "not available from the index at this level")
            warnings.append(f"includefield {include}: {reason}; it was ignored")
    try:
        query = Query(
            level=level,
            conditions=tuple(conditions),
            return_keys=tuple(k for k in dict.fromkeys(returned) if k not in FORMATTED),
            limit=limit or None,  # limit=0: no limit of the client's (the server cap holds)
            offset=offset,
            fuzzy_person_names=fuzzy,
        )
    except InvalidQueryValue as error:
        raise InvalidQuery(str(error)) from None
    capped = level is Level.STUDY or not path
    return QidoRequest(query, tuple(dict.fromkeys(returned)), tuple(warnings), capped)


def check_uid(name: str, value: str) -> str:
    """A UID from a URL or a parameter: digits and dots, at most 64 characters (PS3.5 9.1)."""
    if len(value) > 64 or not _UID.match(value):
        raise InvalidQuery(f"{name}: {value!r} is not a valid UID")
    return value


def _uid_condition(keyword: str, uid: str) -> Condition:
    found = condition(keyword, check_uid(keyword, uid), "UI")
    if found is None:
        raise InvalidQuery(f"{keyword}: a UID is required")
    return found


def _condition(keyword: str, text: str) -> Condition | None:
    value_representation = vr_of(keyword)
    if value_representation in {"UI", "CS"}:
        text = text.replace(",", "\\")
    if value_representation == "UI":
        for uid in (item.strip() for item in text.split("\\")):
            if uid:
                check_uid(keyword, uid)
    try:
        return condition(keyword, text, value_representation)
    except InvalidQueryValue as error:
        raise InvalidQuery(str(error)) from None


def _resolve(name: str) -> tuple[list[str], str | None]:
    """The keyword path a parameter names, or the reason it cannot be used."""
    parts = name.split(".")
    if len(parts) > 2:
        return [], "nested sequence matching is not supported"
    keywords: list[str] = []
    for part in parts:
        keyword = _keyword(part)
        if keyword is None:
            return [], "not a DICOM attribute keyword or tag"
        keywords.append(keyword)
    if len(keywords) == 2:
        sequence, item = keywords
        if item not in SEQUENCES.get(sequence, ()):
            return [], f"matching on {item} in {sequence} is not supported"
        return keywords, None
    keyword = keywords[0]
    if keyword in SEQUENCES:
        return [], "sequence matching needs an item attribute (Sequence.Attribute)"
    if keyword in FORMATTED or not is_matchable(keyword):
        return [keyword], f"matching on {keyword} is not supported"
    return [keyword], None


def _keyword(part: str) -> str | None:
    if _TAG.match(part):
        tag = int(part, 16)
        if not dictionary_has_tag(tag):
            return None
        return keyword_for_tag(tag) or None
    if part in FORMATTED or part in _COMPUTED:
        return part
    return part if tag_for_keyword(part) is not None else None


_COMPUTED = frozenset(str(key) for key in Computed)


def _returnable(keyword: str, level: Level) -> bool:
    if keyword in BY_KEYWORD:
        return DEPTH[BY_KEYWORD[keyword].level] <= DEPTH[level]
    if keyword in _COMPUTED:
        computed = Computed(keyword)
        return computed.level is not Level.PATIENT and DEPTH[computed.level] <= DEPTH[level]
    return False


def _all_keys(level: Level) -> list[str]:
    keys = [a.keyword for a in BY_KEYWORD.values() if DEPTH[a.level] <= DEPTH[level]]
    return keys + [str(c) for c in Computed if _returnable(str(c), level)]


def _count(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidQuery(f"{name}: {value!r} is not a whole number") from None
    if number < 0:
        raise InvalidQuery(f"{name}: {value!r} must not be negative")
    return number


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise InvalidQuery(f"{name}: {value!r} is not true or false")
