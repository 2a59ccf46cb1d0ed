"""The one query model of Query/Retrieve, shared by C-FIND and QIDO-RS; no SQL here.

A :class:`Query` names a level, conditions (one matcher each) and the keys to return.
:func:`condition` turns a request's text value into a matcher as PS3.4 C.2.2.2 says;
``storage.index.matching`` compiles a query to one SQL statement.

Matchers (PS3.4 C.2.2.2)::

    SingleValue   C.2.2.2.1   exact; PN case- and accent-insensitive unless asked otherwise
    (no matcher)  C.2.2.2.3   universal: an empty value, or only ``*``, gives no condition
    Wildcard      C.2.2.2.4   ``*`` any run, ``?`` one character
    Range         C.2.2.2.5   DA, TM, DT; either end may be open
    UidList       C.2.2.2.2   a backslash-separated list of UIDs
    ValueList     C.2.2.2.8   a backslash-separated list of other values (e.g. ``CT\\MR``)
    SequenceItem  C.2.2.2.6   every condition holds for one item of the sequence
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import dictionary_VR

from storage.attributes import BY_KEYWORD, REQUEST_ATTRIBUTES, Level
from storage.temporal import parse_date, parse_datetime, parse_time


class InvalidQueryValue(ValueError):
    """A value that cannot be matched (a malformed date or range, an unknown key)."""


class Computed(StrEnum):
    """Keys derived from the hierarchy in SQL, never stored (PS3.4 C.6.1.1, C.6.2.1)."""

    NumberOfPatientRelatedStudies = "NumberOfPatientRelatedStudies"
    NumberOfPatientRelatedSeries = "NumberOfPatientRelatedSeries"
    NumberOfPatientRelatedInstances = "NumberOfPatientRelatedInstances"
    NumberOfStudyRelatedSeries = "NumberOfStudyRelatedSeries"
    NumberOfStudyRelatedInstances = "NumberOfStudyRelatedInstances"
    NumberOfSeriesRelatedInstances = "NumberOfSeriesRelatedInstances"
    ModalitiesInStudy = "ModalitiesInStudy"
    SOPClassesInStudy = "SOPClassesInStudy"

    @property
    def level(self) -> Level:
        """The level whose entity the key describes (returned at that level and below)."""
        return _COMPUTED_LEVEL[self]


_COMPUTED_LEVEL = {
    Computed.NumberOfPatientRelatedStudies: Level.PATIENT,
    Computed.NumberOfPatientRelatedSeries: Level.PATIENT,
    Computed.NumberOfPatientRelatedInstances: Level.PATIENT,
    Computed.NumberOfStudyRelatedSeries: Level.STUDY,
    Computed.NumberOfStudyRelatedInstances: Level.STUDY,
    Computed.NumberOfSeriesRelatedInstances: Level.SERIES,
    Computed.ModalitiesInStudy: Level.STUDY,
    Computed.SOPClassesInStudy: Level.STUDY,
}
# The computed keys that can be matched, and the stored attribute each one lists.
LISTED_ATTRIBUTE = {
    Computed.ModalitiesInStudy: "Modality",
    Computed.SOPClassesInStudy: "SOPClassUID",
}
MULTI_VALUED_KEYS = frozenset(LISTED_ATTRIBUTE)

SEQUENCES: dict[str, tuple[str, ...]] = {
    "RequestAttributesSequence": tuple(a.keyword for a in REQUEST_ATTRIBUTES),
}
"""Sequences that can be matched, with the keywords their items can be matched on."""

_REQUEST_KEYWORDS = {a.keyword: a for a in REQUEST_ATTRIBUTES}


@dataclass(frozen=True)
class SingleValue:
    """Single value matching, PS3.4 C.2.2.2.1."""

    value: str


@dataclass(frozen=True)
class Wildcard:
    """Wildcard matching, PS3.4 C.2.2.2.4: ``*`` matches any run, ``?`` one character."""

    pattern: str


@dataclass(frozen=True)
class Range:
    """Range matching, PS3.4 C.2.2.2.5; None is an open end. Values are validated text."""

    low: str | None
    high: str | None


@dataclass(frozen=True)
class UidList:
    """List of UID matching, PS3.4 C.2.2.2.2."""

    uids: tuple[str, ...]


@dataclass(frozen=True)
class ValueList:
    """Multiple value matching, PS3.4 C.2.2.2.8: any of the values, each matched exactly."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class SequenceItem:
    """Sequence matching, PS3.4 C.2.2.2.6: one item satisfies every condition."""

    conditions: tuple[Condition, ...]


Matcher = SingleValue | Wildcard | Range | UidList | ValueList | SequenceItem


@dataclass(frozen=True)
class Condition:
    keyword: str
    matcher: Matcher


@dataclass(frozen=True)
class Query:
    """A Q/R query: one result per entity at ``level``, in studies of ``visible_states`` only.

    ``conditions`` may name attributes of any level (those below ``level`` match when some
    descendant matches). ``return_keys`` are registry or :class:`Computed` keywords; the
    unique keys of the level and the levels above are always returned.
    """

    level: Level
    conditions: tuple[Condition, ...] = ()
    return_keys: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0
    fuzzy_person_names: bool = True  # PN matching ignores case and accents; False = exact
    # the study states whose studies the query sees: the workflow's to say (a viewer sees
    # archived studies); none by default, so a query nobody scoped finds nothing
    visible_states: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # plain str keys (a Computed member is a str, but prints as one in a response)
        object.__setattr__(self, "return_keys", tuple(str(k) for k in self.return_keys))
        object.__setattr__(self, "visible_states",
                           frozenset(str(s) for s in self.visible_states))
        if self.limit is not None and self.limit < 0:
            raise InvalidQueryValue(f"limit must not be negative, not {self.limit}")
        if self.offset < 0:
            raise InvalidQueryValue(f"offset must not be negative, not {self.offset}")


@dataclass(frozen=True)
class RetrieveItem:
    """One instance to send for C-MOVE, C-GET or WADO-RS."""

    sop_class_uid: str | None
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    blob_size: int
    study_instance_uid: str
    series_instance_uid: str


UNIQUE_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("PatientID",),
    Level.STUDY: ("PatientID", "StudyInstanceUID"),
    Level.SERIES: ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    Level.IMAGE: ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
"""The keys every result carries: the unique keys of its level and the levels above."""


def is_matchable(keyword: str) -> bool:
    """Whether :func:`condition` accepts this keyword (others are return-only or unknown)."""
    return (
        keyword in BY_KEYWORD
        or keyword in MULTI_VALUED_KEYS
        or keyword in _REQUEST_KEYWORDS
        or keyword in SEQUENCES
    )


def vr_of(keyword: str) -> str | None:
    """The VR the index matches ``keyword`` with (None for an unknown keyword)."""
    attribute = BY_KEYWORD.get(keyword) or _REQUEST_KEYWORDS.get(keyword)
    if attribute is not None:
        return attribute.vr
    if keyword in LISTED_ATTRIBUTE:
        return BY_KEYWORD[LISTED_ATTRIBUTE[Computed(keyword)]].vr
    try:
        return str(dictionary_VR(keyword))
    except (KeyError, ValueError):
        return None


_NO_WILDCARD_VRS = frozenset(
    {"DA", "TM", "DT", "SL", "SS", "UL", "US", "FL", "FD", "OB", "OW", "UN", "AT", "DS", "IS",
     "AS", "UI", "SV", "UV"}
)
_LIST_VRS = frozenset({"UI", "CS"})


def condition(keyword: str, value: str, vr: str | None = None) -> Condition | None:
    """The condition a request's value asks for (PS3.4 C.2.2.2), or None for universal.

    ``vr`` defaults to the registry's (or the data dictionary's). Raises
    :class:`InvalidQueryValue` for a malformed date, time, number or range.
    """
    vr = vr or vr_of(keyword)
    if vr is None:
        raise InvalidQueryValue(f"{keyword} is not a DICOM keyword")
    value = value.strip(" \x00") if vr not in {"LT", "ST", "UT"} else value
    if value.strip("*") == "":
        return None  # C.2.2.2.3: empty, or only '*', matches everything
    if vr in {"DA", "TM", "DT"}:
        return Condition(keyword, _temporal(keyword, value, vr))
    if "\\" in value and vr in _LIST_VRS:
        values = tuple(dict.fromkeys(v.strip() for v in value.split("\\") if v.strip()))
        if not values:
            return None
        return Condition(keyword, UidList(values) if vr == "UI" else ValueList(values))
    if vr in {"IS", "US", "SS", "UL", "SL", "DS", "FL", "FD"}:
        _number(keyword, value, vr)
        return Condition(keyword, SingleValue(value))
    if vr not in _NO_WILDCARD_VRS and ("*" in value or "?" in value):
        return Condition(keyword, Wildcard(value))
    return Condition(keyword, SingleValue(value))


def sequence_condition(keyword: str, item_conditions: tuple[Condition, ...]) -> Condition | None:
    """Sequence matching (PS3.4 C.2.2.2.6); None when every item key is universal."""
    allowed = SEQUENCES.get(keyword)
    if allowed is None:
        raise InvalidQueryValue(f"sequence matching on {keyword} is not supported")
    for item in item_conditions:
        if item.keyword not in allowed:
            raise InvalidQueryValue(f"{item.keyword} cannot be matched in a {keyword} item")
        if isinstance(item.matcher, SequenceItem):
            raise InvalidQueryValue(f"nested sequence matching in {keyword} is not supported")
    if not item_conditions:
        return None
    return Condition(keyword, SequenceItem(tuple(item_conditions)))


def _number(keyword: str, value: str, vr: str) -> None:
    try:
        int(value) if vr in {"IS", "US", "SS", "UL", "SL"} else float(value)
    except ValueError:
        raise InvalidQueryValue(f"{keyword}: {value!r} is not a number ({vr})") from None


_PARSE = {"DA": parse_date, "TM": parse_time}


def _temporal(keyword: str, value: str, vr: str) -> Matcher:
    """Single value or range matching of a date, time or date-time (C.2.2.2.5).

    A single DT value matches the period it names (``20240101`` is that whole day, in UTC).
    """
    if vr == "DT":
        bounds = _split_datetime_range(keyword, value)
        if bounds is None:
            return SingleValue(value)
        low, high = bounds
    elif "-" in value:
        if value.count("-") > 1:
            form = "YYYYMMDD" if vr == "DA" else "HHMMSS"
            raise InvalidQueryValue(
                f"{keyword}: {value!r} is not a {vr} value or range ({form}, {form}-{form})"
            )
        low_text, high_text = value.split("-")
        low = _checked(keyword, low_text, vr) if low_text else None
        high = _checked(keyword, high_text, vr) if high_text else None
    else:
        return SingleValue(_checked(keyword, value, vr))
    if low is None and high is None:
        raise InvalidQueryValue(f"{keyword}: {value!r} is a range without either end")
    if vr == "DA" and low is not None and high is not None and low > high:
        raise InvalidQueryValue(f"{keyword}: range {value!r} ends before it starts")
    return Range(low, high)


def _checked(keyword: str, text: str, vr: str) -> str:
    try:
        return _PARSE[vr](text) if vr in _PARSE else _checked_datetime(text)
    except ValueError as error:
        raise InvalidQueryValue(f"{keyword}: {error}") from None


def _checked_datetime(text: str) -> str:
    parse_datetime(text)
    return text


def _split_datetime_range(keyword: str, value: str) -> tuple[str | None, str | None] | None:
    """The ends of a DT range, or None for a single value; ``-`` also starts a UTC offset.

    A whole value that reads as one date-time (``20240101120000-0500``) is a single value,
    matched as the period it names; otherwise the one ``-`` that splits the text into two valid
    ends (either may be empty) is the range separator.
    """
    try:
        parse_datetime(value)
        return None
    except ValueError:
        pass
    for position, char in enumerate(value):
        if char != "-":
            continue
        low, high = value[:position], value[position + 1 :]
        try:
            if low:
                parse_datetime(low)
            if high:
                parse_datetime(high)
        except ValueError:
            continue
        if low or high:
            return low or None, high or None
    raise InvalidQueryValue(f"{keyword}: {value!r} is not a date-time or date-time range")
