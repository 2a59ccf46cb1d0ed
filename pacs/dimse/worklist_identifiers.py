"""Modality Worklist Identifiers ⇄ the worklist query model (PS3.4 K.6.1.2, Table K.6-1).

A request's keys sit at the top level (patient, visit, request) and in the first item of the
Scheduled Procedure Step Sequence (0040,0100) (the step; further items are ignored). A step
key given at the top level is matched too (some SCUs flatten the sequence). A key with a value
becomes a condition (``storage.query.condition``, the matching rules of Q/R); a key we cannot
match on given a value is ignored for matching and makes every pending response 0xFF01
(K.4.1.1.4: "one or more Optional Keys were not supported"). A patient or request key inside
the step item breaks the structure of the Information Model: 0xA900.

The response (K.6.1.2.2) carries every requested key, empty when unknown, and always the
Return Keys a modality needs to do the step and fill its images' headers (Type 1 and 2 of
Table K.6-1): :data:`REQUIRED_TOP` and the step item's :data:`REQUIRED_STEP`. Specific
Character Set is ``ISO_IR 192`` when a value is not ASCII (the index keeps Unicode).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pacs.dimse.identifiers import IdentifierMismatch, element_text
from pacs.services.errors import InvalidQuery
from storage.query import Condition, InvalidQueryValue, condition
from storage.worklist import BY_KEYWORD, SCHEDULED_STEP_SEQUENCE, WorklistQuery, WorklistRecord

REQUIRED_TOP: tuple[str, ...] = (
    "AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
    "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "RequestedProcedureID", "RequestedProcedureDescription",
)
"""Top-level Return Keys every response carries (PS3.4 Table K.6-1, Type 1 and 2)."""

REQUIRED_STEP: tuple[str, ...] = (
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "Modality", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledStationName", "ScheduledProcedureStepID",
    "ScheduledProcedureStepStatus",
)
"""Return Keys of the Scheduled Procedure Step Sequence item every response carries."""

# Keys that describe the request or response: never matched; Specific Character Set is
# answered for the response's values, the others are not returned.
_RESPONSE_ONLY = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel",
                            "TimezoneOffsetFromUTC"})
_UTF8 = "ISO_IR 192"


@dataclass(frozen=True)
class WorklistRequest:
    """A parsed C-FIND Identifier: the query and where each requested key goes back."""

    query: WorklistQuery
    top: tuple[str, ...]  # top-level keywords asked for, in their order
    step: tuple[str, ...]  # keywords asked for in the step item
    unsupported: tuple[str, ...]  # keys given a value that is not matched (0xFF01)
    character_set_asked: bool = False


def worklist_request(identifier: Dataset, *, fuzzy_person_names: bool = True
                     ) -> WorklistRequest:
    """The query a Modality Worklist Identifier asks (PS3.4 K.6.1.2); raises
    :class:`InvalidQuery` for a malformed value, :class:`IdentifierMismatch` for a key out of
    place, ``ValueError`` when pydicom cannot decode an element."""
    conditions: list[Condition] = []
    top: list[str] = []
    step: list[str] = []
    unsupported: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or element.tag.group in (0x0000, 0x0002):
            continue
        top.append(keyword)
        if keyword == SCHEDULED_STEP_SEQUENCE:
            step += _step_item(element, conditions, unsupported)
        elif keyword not in _RESPONSE_ONLY:
            _key(element, conditions, unsupported)
    try:
        query = WorklistQuery(conditions=tuple(conditions),
                              fuzzy_person_names=fuzzy_person_names)
    except InvalidQueryValue as error:
        raise InvalidQuery(str(error)) from None
    return WorklistRequest(query, tuple(dict.fromkeys(top)), tuple(dict.fromkeys(step)),
                           tuple(dict.fromkeys(unsupported)),
                           character_set_asked="SpecificCharacterSet" in top)


def _step_item(element: DataElement, conditions: list[Condition],
               unsupported: list[str]) -> list[str]:
    """The first item's keys: matched, and the keywords to return in the item."""
    if element.VR != "SQ":
        raise IdentifierMismatch(f"{SCHEDULED_STEP_SEQUENCE} (0040,0100) must be a sequence")
    items = list(element.value or [])
    if not items:
        return []
    keywords = []
    for item_element in items[0]:
        keyword = item_element.keyword
        if not keyword:
            continue
        attribute = BY_KEYWORD.get(keyword)
        if attribute is not None and not attribute.in_step:
            raise IdentifierMismatch(f"{keyword} belongs at the top level, not in the step item")
        if keyword == SCHEDULED_STEP_SEQUENCE:
            raise IdentifierMismatch(f"{SCHEDULED_STEP_SEQUENCE} cannot be nested")
        keywords.append(keyword)
        _key(item_element, conditions, unsupported)
    return keywords


def _key(element: DataElement, conditions: list[Condition], unsupported: list[str]) -> None:
    """A condition for a matchable key with a value; an unmatched key with one is noted."""
    keyword = element.keyword
    attribute = BY_KEYWORD.get(keyword)
    if attribute is None:
        if _has_value(element):
            unsupported.append(keyword)
        return
    try:
        found = condition(keyword, element_text(element), attribute.vr)
    except InvalidQueryValue as error:
        raise InvalidQuery(str(error)) from None
    if found is not None:
        conditions.append(found)


def _has_value(element: DataElement) -> bool:
    if element.VR == "SQ":
        return any(_has_value(inner) for item in element.value or [] for inner in item)
    return bool(element_text(element).strip(" \x00*"))

def worklist_response(record: WorklistRecord, request: WorklistRequest) -> Dataset:
    """The response Identifier for one item (PS3.4 K.6.1.2.2): the requested keys and the
    required ones, the step's in one Scheduled Procedure Step Sequence item; a value the
    index does not have is empty (Type 2), a requested sequence other than the step's is
    returned empty."""
    item = _dataset(record, (*REQUIRED_STEP, *request.step))
    top = _dataset(record, (key for key in (*REQUIRED_TOP, *request.top)
                            if key != SCHEDULED_STEP_SEQUENCE and key not in _RESPONSE_ONLY))
    top.add(DataElement(Tag(SCHEDULED_STEP_SEQUENCE), "SQ", Sequence([item])))
    if any(_non_ascii(value) for value in record.values()):
        top.add(DataElement(0x00080005, "CS", _UTF8))
    elif request.character_set_asked:
        top.add(DataElement(0x00080005, "CS", None))
    return top


def _dataset(record: WorklistRecord, keywords: Iterable[str]) -> Dataset:
    dataset = Dataset()
    for keyword in dict.fromkeys(keywords):
        tag = Tag(keyword)
        vr = str(dictionary_VR(tag)).split(" or ")[0]
        value: Any = Sequence() if vr == "SQ" else (record.get(keyword) or None)
        dataset.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    return dataset


def _non_ascii(value: str | None) -> bool:
    return value is not None and not value.isascii()
