"""Imaging orders from HL7 v2: ORM^O01 (v2.3.1) and OMI^O23 (v2.5.1), IHE RAD-2/RAD-4 and
RAD-13, mapped to DICOM keywords as dcm4chee-arc maps an order to its Modality Worklist, then
one call of :class:`pacs.services.orders.OrderService`, then the ACK.

ORC-1 (order control) says which call: NW creates; XO, XX and SC update (the message
carries the whole order: its steps replace the order's, matched by ScheduledProcedureStepID,
else by position); CA and OC cancel, DC discontinues. An update or cancel finds its order by
the filler order number (ORC-3), else the placer order number (ORC-2), else the
AccessionNumber, among orders not cancelled.

==================================  ==================================================
DICOM keyword                       HL7 field (first found)
==================================  ==================================================
PatientID, IssuerOfPatientID        PID-3.1, PID-3.4 (first repetition)
PatientName                         PID-5 (XPN family^given^middle^suffix^prefix →
                                    PN family^given^middle^prefix^suffix)
PatientBirthDate, PatientSex        PID-7 (date part), PID-8 (M, F, O; A, N → O; U: none)
ReferringPhysicianName              PV1-8, else OBR-16 (XCN, as PN)
PlacerOrderNumber…, FillerOrder…    ORC-2.1 / OBR-2.1, ORC-3.1 / OBR-3.1
AccessionNumber                     IPC-1.1, OBR-18
RequestedProcedureID                IPC-2.1, OBR-19
RequestedProcedureDescription       OBR-44.2, OBR-4.2 (OBR-4.5)
StudyInstanceUID                    IPC-3.1, ZDS-1.1
ScheduledProcedureStepID            IPC-4.1, OBR-20
Modality                            IPC-5.1, OBR-24
ScheduledStationName                IPC-7.1
ScheduledStationAETitle             IPC-9, ORC-18.1, OBR-21
ScheduledProcedureStepStart…        TQ1-7, ORC-7.4, OBR-27.4 (TS: date, time)
ScheduledProcedureStepDescription   OBR-4.2 (OBR-4.5)
ScheduledPerformingPhysicianName    OBR-34.1 (CNN id&family&given&middle&suffix&prefix)
ScheduledProcedureStepStatus        ORC-5 (SC, IP, CM, CA, DC) when given
==================================  ==================================================

Each OBR is a step (ORM); in OMI each IPC is a step, with its OBR's values. A field sent as
``""`` (the HL7 null) clears the keyword on an update; an empty one leaves it as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hl7

from pacs.hl7.ack import AckCode, ErrorCode, Header, acknowledge
from pacs.services.errors import (
    Conflict,
    InvalidQuery,
    NotFound,
    OutOfResources,
)
from pacs.services.orders import (
    STEPS,
    OrderReference,
    OrderService,
    StepsMode,
)
from pacs.services.workflow import actor

log = logging.getLogger(__name__)

SERVED = (("ORM", "O01"), ("OMI", "O23"))
CREATE = frozenset({"NW"})
UPDATE = frozenset({"XO", "XX", "SC"})
CANCEL = frozenset({"CA", "OC"})
DISCONTINUE = frozenset({"DC"})
_STEP_STATUS = {"SC": "SCHEDULED", "IP": "STARTED", "CM": "COMPLETED", "CA": "CANCELED",
                "DC": "DISCONTINUED"}  # ORC-5 (HL7 table 0038) → PS3.3 C.4.10
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O"}  # HL7 table 0001 → PS3.3 C.7.1.1
_NULL = '""'

# Where each keyword came from, to name the HL7 field in an error (ORM; OMI differs below)
_FIELDS = {
    "PatientID": "PID-3", "IssuerOfPatientID": "PID-3.4", "PatientName": "PID-5",
    "PatientBirthDate": "PID-7", "PatientSex": "PID-8", "ReferringPhysicianName": "PV1-8",
    "PlacerOrderNumberImagingServiceRequest": "ORC-2",
    "FillerOrderNumberImagingServiceRequest": "ORC-3", "AccessionNumber": "OBR-18",
    "RequestedProcedureID": "OBR-19", "RequestedProcedureDescription": "OBR-44",
    "StudyInstanceUID": "ZDS-1", STEPS: "OBR", "ScheduledProcedureStepID": "OBR-20",
    "Modality": "OBR-24", "ScheduledStationAETitle": "ORC-18", "ScheduledStationName": "IPC-7",
    "ScheduledProcedureStepStartDate": "TQ1-7", "ScheduledProcedureStepStartTime": "TQ1-7",
    "ScheduledProcedureStepDescription": "OBR-4", "ScheduledPerformingPhysicianName": "OBR-34",
    "ScheduledProcedureStepStatus": "ORC-5",
}
_OMI_FIELDS = {**_FIELDS, "AccessionNumber": "IPC-1", "RequestedProcedureID": "IPC-2",
               "StudyInstanceUID": "IPC-3", "ScheduledProcedureStepID": "IPC-4",
               "Modality": "IPC-5", "ScheduledStationAETitle": "IPC-9", STEPS: "IPC"}
_KEYWORD = re.compile(r"^(ScheduledProcedureStepSequence(\[\d+\])?\.?)?([A-Za-z]+)")


class Refused(Exception):
    """A message answered AE or AR without calling the service."""

    def __init__(self, code: AckCode, error: ErrorCode, text: str, location: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.error = error
        self.location = location


@dataclass
class Instruction:
    """What one message asks: the call, its body of DICOM keywords, the order it names."""

    control: str
    body: dict[str, Any] = field(default_factory=dict)
    reference: OrderReference = field(default_factory=OrderReference)


class OrderFeed:
    """The HL7 front end of the order service: :meth:`message` answers one message (the
    listener's :class:`pacs.hl7.mllp.MessageHandler`)."""

    def __init__(self, orders: OrderService) -> None:
        self.orders = orders

    def message(self, data: bytes, address: str) -> bytes:
        text = _decode(data)
        header = Header.read(text)
        fields = _OMI_FIELDS if header.message_type.startswith("OMI") else _FIELDS
        try:
            message = _parse(text, header)
            instruction = read_order(message)
            who = actor("hl7", header.application or None, address)
            order = self._call(instruction, who)
        except Refused as refused:
            log.info("HL7 %s %s from %s: %s %s", header.message_type, header.control_id,
                     address, refused.code.value, refused)
            return acknowledge(header, refused.code, str(refused), refused.error,
                               refused.location)
        except InvalidQuery as error:
            text = _named(str(error), fields)
            kind = (ErrorCode.REQUIRED_FIELD_MISSING if "required" in text
                    else ErrorCode.DATA_TYPE)
            return self._error(header, address, AckCode.ERROR, kind, text)
        except NotFound as error:
            return self._error(header, address, AckCode.ERROR, ErrorCode.UNKNOWN_KEY,
                               str(error))
        except Conflict as error:
            return self._error(header, address, AckCode.ERROR, ErrorCode.DUPLICATE_KEY,
                               str(error))
        except OutOfResources as error:
            return self._error(header, address, AckCode.REJECT, ErrorCode.INTERNAL,
                               str(error))
        except Exception:  # a bug, or a database refusal: the peer learns only that
            log.exception("HL7 %s %s from %s failed", header.message_type, header.control_id,
                          address)
            return acknowledge(header, AckCode.REJECT, "internal error (details are in the "
                               "server log)", ErrorCode.INTERNAL)
        log.info("HL7 %s %s from %s: AA, order %d (%s)", header.message_type,
                 header.control_id, address, order, instruction.control)
        return acknowledge(header, AckCode.ACCEPT)

    def too_large(self, head: bytes, address: str, limit: int) -> bytes:
        header = Header.read(_decode(head))
        return acknowledge(header, AckCode.REJECT, f"message larger than {limit} bytes",
                           ErrorCode.INTERNAL)

    def _call(self, instruction: Instruction, who: str) -> int:
        control = instruction.control
        if control in CREATE:
            return self.orders.create(instruction.body, who, source="hl7").id
        if control in UPDATE:
            return self.orders.update(instruction.reference, instruction.body, who,
                                      steps_mode=StepsMode.REPLACE).id
        return self.orders.cancel(instruction.reference, who,
                                  discontinue=control in DISCONTINUE).id

    @staticmethod
    def _error(header: Header, address: str, code: AckCode, error: ErrorCode,
               text: str) -> bytes:
        log.info("HL7 %s %s from %s: %s %s", header.message_type, header.control_id,
                 address, code.value, text)
        return acknowledge(header, code, text, error)


def _decode(data: bytes) -> str:
    """UTF-8 (HL7 v2.8's choice, and ASCII's superset), else ISO 8859-1 (``8859/1``, the
    usual MSH-18 of older senders), which decodes any byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _parse(text: str, header: Header) -> hl7.Message:
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise Refused(AckCode.REJECT, ErrorCode.SEGMENT_SEQUENCE,
                      "not an HL7 v2 message: it does not begin with an MSH segment", "MSH")
    kind = tuple(header.message_type.split("^")[:2])
    if kind not in SERVED:
        raise Refused(AckCode.REJECT, ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                      f"message type {header.message_type[:40] or '(none)'} is not served: "
                      "ORM^O01 and OMI^O23 are", "MSH^1^9")
    try:
        return hl7.parse(text)
    except (hl7.HL7Exception, ValueError, IndexError, KeyError) as error:
        raise Refused(AckCode.REJECT, ErrorCode.SEGMENT_SEQUENCE,
                      f"the message cannot be parsed: {type(error).__name__}") from None


def _named(text: str, fields: dict[str, str]) -> str:
    """A service error's text (``Keyword: why``, ``ScheduledProcedureStepSequence[2].Modality:
    why``) with the HL7 field the keyword came from in front: ``OBR-24 (...): why``."""
    where, colon, why = text.partition(":")
    match = _KEYWORD.match(where)
    if not colon or match is None:
        return text
    field = fields.get(match[3]) or (fields[STEPS] if match[1] else "")
    return f"{field} ({where}):{why}" if field else text


# -- reading the message -------------------------------------------------------------------

Getter = Callable[..., str | None]


def _getter(message: hl7.Message, segment: hl7.Segment) -> Getter:
    """``get(field, component, subcomponent, repetition)``: the unescaped value; ``""`` for
    an absent or empty one, None for the HL7 null ``""``."""

    def get(number: int, component: int = 1, sub: int = 1, repetition: int = 1) -> str | None:
        try:
            value = segment.extract_field(1, number, repetition, component, sub)
        except (IndexError, KeyError, TypeError, ValueError):
            return ""
        value = str(value or "")
        if value == _NULL:
            return None
        return str(message.unescape(value)).strip()

    return get


def _first(*values: str | None) -> str | None:
    """The first value given: a text, or None (the HL7 null); "" when none is."""
    for value in values:
        if value != "":
            return value
    return ""


def _put(body: dict[str, Any], keyword: str, value: str | None) -> None:
    if value != "":
        body[keyword] = value


def _name(components: list[str | None]) -> str | None:
    """XPN / XCN name components family, given, middle, suffix, prefix → DICOM PN
    family^given^middle^prefix^suffix (PS3.5 6.2.1), empty trailing ones dropped."""
    if any(part is None for part in components) and not any(components):
        return None
    family, given, middle, suffix, prefix = ((part or "") for part in components)
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def _timestamp(value: str | None) -> tuple[str | None, str | None]:
    """An HL7 TS ``YYYYMMDD[HHMM[SS[.S+]]][+/-ZZZZ]`` → (DICOM DA, TM); the zone is dropped
    (the worklist is in local time)."""
    if not value:
        return value, value
    value = re.split(r"[+-]", value, maxsplit=1)[0]
    return value[:8], value[8:] or ""


def read_order(message: hl7.Message) -> Instruction:
    """The instruction of an ORM^O01 / OMI^O23 (see the module's docstring)."""
    body: dict[str, Any] = {}
    steps: list[dict[str, Any]] = []
    orc: Getter | None = None
    control = ""
    placer = filler = accession = ""
    start: str | None = ""
    obr: Getter | None = None
    for segment in message:
        name = str(segment[0])
        get = _getter(message, segment)
        if name == "PID":
            _put(body, "PatientID", get(3))
            _put(body, "IssuerOfPatientID", _first(get(3, 4, 1), get(3, 4, 2)))
            _put(body, "PatientName", _name([get(5, n) for n in range(1, 6)]))
            birth = get(7)
            _put(body, "PatientBirthDate", birth[:8] if birth else birth)
            sex = get(8)
            if sex:
                body["PatientSex"] = _SEX.get(sex.upper(), sex) if sex.upper() != "U" else None
            elif sex is None:
                body["PatientSex"] = None
        elif name == "PV1":
            _put(body, "ReferringPhysicianName", _name([get(8, n) for n in range(2, 7)]))
        elif name == "ORC":
            orc = get
            if not control:
                control = (get(1) or "").upper()
                placer, filler = get(2) or "", get(3) or ""
            start = _first(get(7, 4), start)
        elif name == "TQ1":
            start = _first(get(7), start)
        elif name == "OBR":
            obr = get
            placer, filler = placer or get(2) or "", filler or get(3) or ""
            if "ReferringPhysicianName" not in body:  # PV1-8 first
                _put(body, "ReferringPhysicianName", _name([get(16, n) for n in range(2, 7)]))
            accession = accession or get(18) or ""
            _put(body, "AccessionNumber", body.get("AccessionNumber", "") or get(18))
            _put(body, "RequestedProcedureID", body.get("RequestedProcedureID", "") or get(19))
            _put(body, "RequestedProcedureDescription",
                 body.get("RequestedProcedureDescription", "")
                 or _first(get(44, 2), get(4, 2), get(4, 5)))
            steps.append(_obr_step(get, orc, _first(start, get(27, 4))))
        elif name == "IPC":
            if obr is None:
                raise Refused(AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE,
                              "IPC before its OBR segment", "IPC")
            if steps and steps[-1].get("_from") == "OBR":
                steps.pop()  # the OBR's step is this IPC's (and its siblings')
            step = _obr_step(obr, orc, _first(start, obr(27, 4)))
            step["_from"] = "IPC"
            _put(step, "ScheduledProcedureStepID", get(4))
            _put(step, "Modality", get(5))
            _put(step, "ScheduledStationName", get(7))
            _put(step, "ScheduledStationAETitle", get(9))
            steps.append(step)
            _put(body, "AccessionNumber", get(1))
            accession = get(1) or accession
            _put(body, "RequestedProcedureID", get(2))
            _put(body, "StudyInstanceUID", get(3))
        elif name == "ZDS":
            _put(body, "StudyInstanceUID", body.get("StudyInstanceUID", "") or get(1))
    if orc is None:
        raise Refused(AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE, "no ORC segment", "ORC")
    if control not in CREATE | UPDATE | CANCEL | DISCONTINUE:
        raise Refused(AckCode.ERROR, ErrorCode.UNSUPPORTED_EVENT,
                      f"ORC-1 order control {control[:8]!r} is not served: NW, XO, XX, SC, "
                      "CA, OC, DC are", "ORC^1^1")
    status = _STEP_STATUS.get((orc(5) or "").upper())
    for step in steps:
        step.pop("_from", None)
        if status and control not in CANCEL | DISCONTINUE:
            step["ScheduledProcedureStepStatus"] = status
    if steps or control in CREATE:
        body[STEPS] = steps
    _put(body, "PlacerOrderNumberImagingServiceRequest", placer)
    _put(body, "FillerOrderNumberImagingServiceRequest", filler)
    return Instruction(control, body, OrderReference(
        placer_order_number=placer or None, filler_order_number=filler or None,
        accession_number=accession or None))


def _obr_step(obr: Getter, orc: Getter | None, start: str | None) -> dict[str, Any]:
    step: dict[str, Any] = {"_from": "OBR"}
    date, time = _timestamp(start)
    _put(step, "ScheduledProcedureStepStartDate", date)
    _put(step, "ScheduledProcedureStepStartTime", time)
    _put(step, "ScheduledProcedureStepID", obr(20))
    _put(step, "Modality", obr(24))
    _put(step, "ScheduledStationAETitle", _first(orc(18) if orc else "", obr(21)))
    _put(step, "ScheduledProcedureStepDescription", _first(obr(4, 2), obr(4, 5)))
    technician = [obr(34, 1, n) for n in range(2, 7)]
    _put(step, "ScheduledPerformingPhysicianName", _name(technician))
    return step
