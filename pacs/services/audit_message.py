"""Audit rows as DICOM Audit Messages (PS3.15 A.5: the RFC 3881 based XML schema of A.5.1,
with the event specializations of A.5.3).

One table, :data:`EVENTS`, says which DICOM event each action of the audit trail is; an action
it does not list becomes a generic event (:func:`event_kind`). Which participants and objects a
message names follows from the kind's :class:`Shape`:

=======================  =====================================================================
action                   DICOM event (EventID, EventActionCode, EventTypeCode)
=======================  =====================================================================
store                    110104 DICOM Instances Transferred; C (a new instance), U (replaced),
                         R (already held). The peer is the Source (110153, the requestor), this
                         server the Destination (110152). The stores of one actor and study
                         read in one batch are one message (SOPClass NumberOfInstances).
retrieve                 110104 DICOM Instances Transferred, R: this server is the Source; the
                         Destination is the C-MOVE destination AE or else the requestor. Not
                         110106 Export: A.5.3.4 is for data leaving the security domain (media,
                         e-mail), a peer's retrieval is a transfer.
route                    110104, R, to the routing peer (a planned or retried job: 110103, R)
query                    110112 Query, E: the query as search criteria (below)
accept, correct, merge,  110103 DICOM Instances Accessed, U (correct, merge: life cycle 3,
quarantine, stable       amendment)
reject, reject-series    110103 DICOM Instances Accessed, D (life cycle 14, logical deletion)
delete, purge            110105 DICOM Study Deleted, D (life cycle 15, permanent erasure)
token-*, ae-*            110113 Security Alert, E, 110137 User Security Attributes Changed:
                         the token or AE is the alert subject (User Identifier)
auth-failed              110114 User Authentication, E, 110122 Login; outcome 4 (minor
                         failure: the attempt was refused, the user may try again)
sign-in, sign-out        110114 User Authentication, E, 110122 Login / 110123 Logout
association-rejected     110113 Security Alert, E, 110126 Node Authentication: a calling AE or
                         address that is not registered; outcome 4
permission-denied,       110113 Security Alert, E, 110132 Use of Restricted Function (the
connection-refused,      nearest CID 401 term for a request the server refused to a peer: a
association-aborted,     service its role does not allow, a connection over the limit, an
http-refused             oversized PDU or header); outcome 4: "mitigation efforts were
                         effective" (A.5.3.11). The peer is a performing participant, the
                         subject its node (110182 Node ID), the reason the Alert Description.
audit                    110113 Security Alert, 110133 Audit Recording Stopped (query events
                         the audit writer dropped); outcome 8
(not listed)             with a study: 110103, U; without: 110113 Security Alert, 110132
=======================  =====================================================================

Application start and stop are 110100 Application Activity (110120 / 110121), made by
:func:`application_activity` (no audit row). Every message also carries the trail's action as
an EventTypeCode of the local coding scheme ``99PACS`` (PS3.16 8.2: a private scheme starts
with 99), and the row's outcome as EventOutcomeDescription.

Participants: the actor of a row is the UserID as the trail records it (``dimse:CT1@10.0.0.5
tls:CN=ct1``, ``http:token:ohif@10.0.0.7``, ``cli:purge``; A.5.2.1 asks for the identifier of the
internal logs), with AlternativeUserID ``AETITLES=CT1`` for a DICOM peer (A.5.2.2), UserName the
TLS client certificate's subject or the token's or OIDC subject's name, and its address as
NetworkAccessPointID (type 2, IP address). This server is the participant with UserID its AE
title and NetworkAccessPointID its host name (type 1). At most one participant is the requestor.

Objects: a study is ParticipantObjectTypeCode 2 (system), role 3 (report), ID type 110180 Study
Instance UID; its patient (when the study is still in the index) type 1, role 1, ID type
(2, RFC-3881, "Patient Number") with the patient's name. A query is object type 2, role 3, ID
type (10, RFC-3881, "Search Criteria"): the trail keeps the matching keys, not the request's
data set, so it is not 110181 SOP Class UID with the encoded identifier; the ID is the protocol
and level (``C-FIND STUDY``), ParticipantObjectQuery the keys in query string form, base64
(A.5.3.10 note 2). The row's other details travel as a ParticipantObjectDetail ``Detail``
(JSON, base64) of the first object.

Size: :func:`render` keeps a message within a byte budget by shortening the details, then the
descriptions; the required elements always stay and the XML stays whole.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import urlencode

from storage.index.audit_feed import FeedEvent

__all__ = ["EVENTS", "Actor", "AuditSource", "Code", "EventKind", "FeedEvent", "Outcome",
           "RenderedMessage", "Shape", "application_activity", "event_kind", "messages_for",
           "render"]


@dataclass(frozen=True)
class Code:
    """A coded value of the schema's CodedValueType: csd-code, codeSystemName, originalText."""

    value: str
    scheme: str
    meaning: str


DCM = "DCM"
RFC_3881 = "RFC-3881"
LOCAL_SCHEME = "99PACS"

# CID 400 Audit Event ID
APPLICATION_ACTIVITY = Code("110100", DCM, "Application Activity")
INSTANCES_ACCESSED = Code("110103", DCM, "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", DCM, "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", DCM, "DICOM Study Deleted")
QUERY = Code("110112", DCM, "Query")
SECURITY_ALERT = Code("110113", DCM, "Security Alert")
USER_AUTHENTICATION = Code("110114", DCM, "User Authentication")
# CID 401 Audit Event Type Code
APPLICATION_START = Code("110120", DCM, "Application Start")
APPLICATION_STOP = Code("110121", DCM, "Application Stop")
LOGIN = Code("110122", DCM, "Login")
LOGOUT = Code("110123", DCM, "Logout")
NODE_AUTHENTICATION = Code("110126", DCM, "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = Code("110132", DCM, "Use of Restricted Function")
AUDIT_RECORDING_STOPPED = Code("110133", DCM, "Audit Recording Stopped")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", DCM, "User Security Attributes Changed")
# CID 402 Audit Active Participant Role ID Code
APPLICATION = Code("110150", DCM, "Application")
APPLICATION_LAUNCHER = Code("110151", DCM, "Application Launcher")
DESTINATION = Code("110152", DCM, "Destination Role ID")
SOURCE = Code("110153", DCM, "Source Role ID")
# Participant Object ID Type Codes (A.5.1.2.4, CID 404)
PATIENT_NUMBER = Code("2", RFC_3881, "Patient Number")
SEARCH_CRITERIA = Code("10", RFC_3881, "Search Criteria")
USER_IDENTIFIER = Code("11", RFC_3881, "User Identifier")
STUDY_INSTANCE_UID = Code("110180", DCM, "Study Instance UID")
NODE_ID = Code("110182", DCM, "Node ID")


class Outcome(IntEnum):
    """EventOutcomeIndicator (A.5.2)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the action was refused or will be retried
    SERIOUS_FAILURE = 8  # the action ended without doing what was asked
    MAJOR_FAILURE = 12


class Shape(StrEnum):
    """Which participants and objects a message names (see the module docstring)."""

    RECEIVED = "received"  # a peer sent instances to this server
    SENT = "sent"  # this server sent instances to a peer
    QUERY = "query"
    STUDY = "study"  # a person or process changed (or deleted) a study
    SECURITY = "security"  # a person or process changed security settings (tokens, AEs)
    PEER_ALERT = "peer-alert"  # this server refused a peer
    AUTHENTICATION = "authentication"


ActionCode = str | Callable[[FeedEvent], str]
OutcomeRule = Callable[[FeedEvent], Outcome]

_FAILED = re.compile(r"^\s*(refused|failed|denied|error|forbidden|unauthori[sz]ed|invalid|"
                     r"expired|unknown|not allowed)", re.IGNORECASE)
_WILL_RETRY = re.compile(r"will retry", re.IGNORECASE)
_COUNTS = re.compile(r"(\d+) completed, (\d+) failed")


def outcome_of_text(event: FeedEvent) -> Outcome:
    """The default rule, from the words of the row's outcome: a failure that will be retried
    is minor, another failure or refusal serious, anything else a success."""
    if _FAILED.match(event.outcome):
        return Outcome.MINOR_FAILURE if _WILL_RETRY.search(event.outcome) else \
            Outcome.SERIOUS_FAILURE
    return Outcome.SUCCESS


def refused(event: FeedEvent) -> Outcome:
    """A refusal, denial or failed sign-in is the event itself: minor failure (A.5.3.11:
    mitigation was effective; A.5.2: e.g. an invalid password the user may retry)."""
    return Outcome.MINOR_FAILURE


def audit_loss(event: FeedEvent) -> Outcome:
    return Outcome.SERIOUS_FAILURE


def retrieval_outcome(event: FeedEvent) -> Outcome:
    """Some sub-operations failed: minor when others completed, serious when none did."""
    counts = _COUNTS.search(event.outcome)
    if counts:
        completed, failed = int(counts[1]), int(counts[2])
        if failed:
            return Outcome.MINOR_FAILURE if completed else Outcome.SERIOUS_FAILURE
        return Outcome.SUCCESS
    return outcome_of_text(event)


def store_action(event: FeedEvent) -> str:
    """C: the receiver had no copy; U: it replaced its copy; R: it already held it (A.5.3.7)."""
    if event.outcome.startswith("replaced"):
        return "U"
    if event.outcome.startswith("already present"):
        return "R"
    return "C"


@dataclass(frozen=True)
class EventKind:
    """What a row of the trail is in PS3.15 A.5.3 terms."""

    event_id: Code
    action_code: ActionCode
    shape: Shape
    type_codes: tuple[Code, ...] = ()
    outcome: OutcomeRule = outcome_of_text
    life_cycle: str | None = None  # ParticipantObjectDataLifeCycle of the study (A.5.1.2.3)

    def action_of(self, event: FeedEvent) -> str:
        return self.action_code if isinstance(self.action_code, str) else \
            self.action_code(event)


_ACCESSED = EventKind(INSTANCES_ACCESSED, "U", Shape.STUDY)
_REJECTED = EventKind(INSTANCES_ACCESSED, "D", Shape.STUDY, life_cycle="14")
_DELETED = EventKind(STUDY_DELETED, "D", Shape.STUDY, life_cycle="15")
_SECURITY_CHANGE = EventKind(SECURITY_ALERT, "E", Shape.SECURITY,
                             (USER_SECURITY_ATTRIBUTES_CHANGED,))
_RESTRICTED = EventKind(SECURITY_ALERT, "E", Shape.PEER_ALERT, (USE_OF_RESTRICTED_FUNCTION,),
                        outcome=refused)
_ROUTE_SENT = EventKind(INSTANCES_TRANSFERRED, "R", Shape.SENT)
_ROUTE_PLANNED = EventKind(INSTANCES_ACCESSED, "R", Shape.STUDY)
_UNKNOWN_STUDY = EventKind(INSTANCES_ACCESSED, "U", Shape.STUDY)
_UNKNOWN = EventKind(SECURITY_ALERT, "E", Shape.SECURITY, (USE_OF_RESTRICTED_FUNCTION,))

EVENTS: dict[str, EventKind | Callable[[FeedEvent], EventKind]] = {
    "store": EventKind(INSTANCES_TRANSFERRED, store_action, Shape.RECEIVED),
    "retrieve": EventKind(INSTANCES_TRANSFERRED, "R", Shape.SENT, outcome=retrieval_outcome),
    "route": lambda event: _ROUTE_SENT if event.actor.startswith("pacs:route:")
    else _ROUTE_PLANNED,
    "query": EventKind(QUERY, "E", Shape.QUERY),
    "accept": _ACCESSED,
    "quarantine": _ACCESSED,
    "stable": _ACCESSED,
    "correct": EventKind(INSTANCES_ACCESSED, "U", Shape.STUDY, life_cycle="3"),
    "merge": EventKind(INSTANCES_ACCESSED, "U", Shape.STUDY, life_cycle="3"),
    "reject": _REJECTED,
    "reject-series": _REJECTED,
    "delete": _DELETED,
    "purge": _DELETED,
    "token-create": _SECURITY_CHANGE,
    "token-revoke": _SECURITY_CHANGE,
    "ae-add": _SECURITY_CHANGE,
    "ae-remove": _SECURITY_CHANGE,
    "auth-failed": EventKind(USER_AUTHENTICATION, "E", Shape.AUTHENTICATION, (LOGIN,),
                             outcome=refused),
    "sign-in": EventKind(USER_AUTHENTICATION, "E", Shape.AUTHENTICATION, (LOGIN,)),
    "sign-out": EventKind(USER_AUTHENTICATION, "E", Shape.AUTHENTICATION, (LOGOUT,)),
    "association-rejected": EventKind(SECURITY_ALERT, "E", Shape.PEER_ALERT,
                                      (NODE_AUTHENTICATION,), outcome=refused),
    "permission-denied": _RESTRICTED,
    "connection-refused": _RESTRICTED,
    "association-aborted": _RESTRICTED,
    "http-refused": _RESTRICTED,
    "audit": EventKind(SECURITY_ALERT, "E", Shape.SECURITY, (AUDIT_RECORDING_STOPPED,),
                       outcome=audit_loss),
}
"""The DICOM event of each action of the audit trail; add a line for a new action."""


def event_kind(event: FeedEvent) -> EventKind:
    """The kind of ``event``: from :data:`EVENTS`, else a generic one (a study changed, or
    a restricted function used)."""
    kind = EVENTS.get(event.action)
    if kind is None:
        return _UNKNOWN_STUDY if event.study_instance_uid else _UNKNOWN
    return kind if isinstance(kind, EventKind) else kind(event)


# -- participants ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditSource:
    """This server, as the messages name it: AuditSourceID (A.5.2) and the participant that
    is this application."""

    ae_title: str
    hostname: str
    source_id: str = ""

    @property
    def audit_source_id(self) -> str:
        return self.source_id or self.ae_title


@dataclass(frozen=True)
class Actor:
    """An actor of the trail, read back from its text (``pacs.services.workflow.actor``):
    ``PROTOCOL:[NAME@]ADDRESS`` for peers, then `` tls:SUBJECT`` when a client certificate
    was shown; ``cli``, ``cli:purge``, ``pacs:stability`` for local processes."""

    text: str
    protocol: str
    name: str | None = None
    address: str | None = None
    tls_subject: str | None = None

    @classmethod
    def parse(cls, text: str) -> Actor:
        who, _, subject = text.partition(" tls:")
        protocol, colon, rest = who.partition(":")
        if not colon:
            return cls(text, who, tls_subject=subject or None)
        name: str | None = rest
        address: str | None = None
        head, at, tail = rest.rpartition("@")
        if at and (found := _address(tail)):
            name, address = head or None, found
        elif found := _address(rest):
            name, address = None, found
        return cls(text, protocol, name or None, address, subject or None)

    @property
    def ae_title(self) -> str | None:
        return self.name if self.protocol == "dimse" else None

    @property
    def user_name(self) -> str | None:
        """A human-meaningful name (A.5.2.3): the certificate subject, or the principal."""
        if self.tls_subject:
            return self.tls_subject
        if self.protocol in _HTTP and self.name:
            return self.name.partition(":")[2] or self.name
        return None


_HTTP = ("http", "dicomweb")  # STOW-RS stores are audited as dicomweb:ADDRESS


def _address(text: str) -> str | None:
    """The IP address of ``ADDRESS``, ``ADDRESS:PORT`` or ``[ADDRESS]:PORT`` (the trail has
    each); None when ``text`` is none of them. An IPv6 address written with a port and no
    brackets can read both ways: the whole text is taken when it is an address."""
    candidates = [text.strip("[]")]
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit():
        candidates.append(host.strip("[]"))
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


@dataclass
class _Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_user_id: str | None = None
    user_name: str | None = None
    access_point: str | None = None
    access_point_type: str | None = None  # 1 machine name, 2 IP address


def _actor(actor: Actor, *, requestor: bool, role: Code | None = None) -> _Participant:
    return _Participant(
        user_id=actor.text, requestor=requestor, role=role,
        alternative_user_id=f"AETITLES={actor.ae_title}" if actor.ae_title else None,
        user_name=actor.user_name,
        access_point=actor.address, access_point_type="2" if actor.address else None,
    )


def _server(source: AuditSource, *, requestor: bool, role: Code | None = None
            ) -> _Participant:
    return _Participant(
        user_id=source.ae_title, requestor=requestor, role=role,
        alternative_user_id=f"AETITLES={source.ae_title}", user_name="pacs",
        access_point=source.hostname or None,
        access_point_type="1" if source.hostname else None,
    )


def _ae(ae_title: str, *, requestor: bool, role: Code) -> _Participant:
    return _Participant(user_id=ae_title, requestor=requestor, role=role,
                        alternative_user_id=f"AETITLES={ae_title}")


# -- objects -----------------------------------------------------------------------------------
@dataclass
class _Object:
    object_id: str
    id_type: Code
    type_code: str | None = None
    role: str | None = None
    life_cycle: str | None = None
    name: str | None = None
    query: bytes | None = None
    details: list[tuple[str, bytes]] = field(default_factory=list)
    instances: int | None = None  # ParticipantObjectDescription/SOPClass@NumberOfInstances
    instance_uids: list[str] = field(default_factory=list)  # its Instance elements


def _study(event: FeedEvent, kind: EventKind, instances: int | None,
           instance_uids: Sequence[str] = ()) -> list[_Object]:
    if not event.study_instance_uid:
        return []
    objects = [_Object(event.study_instance_uid, STUDY_INSTANCE_UID, "2", "3",
                       kind.life_cycle, instances=instances, instance_uids=list(instance_uids))]
    if event.patient_id:
        objects.append(_Object(event.patient_id, PATIENT_NUMBER, "1", "1",
                               name=event.patient_name or None))
    return objects


def _query_object(event: FeedEvent) -> _Object:
    detail = event.detail
    how = str(detail.get("how") or "query")
    level = str(detail.get("level") or "")
    keys = detail.get("keys") if isinstance(detail.get("keys"), dict) else {}
    query = urlencode({str(k): str(v) for k, v in (keys or {}).items()},
                      safe="*?^\\,-.:()= ")
    return _Object(f"{how} {level}".strip(), SEARCH_CRITERIA, "2", "3", query=query.encode(),
                   details=[("QueryEncoding", b"UTF-8")])


# -- building the message ------------------------------------------------------------------
@dataclass(frozen=True)
class RenderedMessage:
    """One audit message ready for syslog: the XML (UTF-8), when the event happened, its
    outcome (which sets the syslog severity) and the id of the last row it stands for."""

    xml: bytes
    at: datetime
    outcome: Outcome
    last_id: int | None = None


@dataclass
class _Message:
    event_id: Code
    action_code: str
    at: datetime
    outcome: Outcome
    type_codes: list[Code]
    description: str
    participants: list[_Participant]
    objects: list[_Object]
    detail: dict[str, Any]
    alert: str | None = None  # Alert Description of a Security Alert's subject (A.5.3.11)


def _compose(event: FeedEvent, source: AuditSource, group: Sequence[FeedEvent]) -> _Message:
    kind = event_kind(event)
    actor = Actor.parse(event.actor)
    detail = dict(event.detail)
    count = detail.pop("count", None)
    description = event.outcome + (f" ({count} times)" if isinstance(count, int) and
                                   count > 1 else "")
    participants: list[_Participant] = []
    objects: list[_Object] = []
    alert: str | None = None
    if kind.shape is Shape.RECEIVED:
        participants = [_actor(actor, requestor=True, role=SOURCE),
                        _server(source, requestor=False, role=DESTINATION)]
        uids = [str(item.detail["sop_instance_uid"]) for item in group
                if item.detail.get("sop_instance_uid")]
        detail.pop("sop_instance_uid", None)
        objects = _study(event, kind, len(group), uids)
    elif kind.shape is Shape.SENT:
        destination = _move_destination(event)
        if actor.text.startswith("pacs:route:"):
            participants = [_server(source, requestor=True, role=SOURCE),
                            _ae(actor.text.removeprefix("pacs:route:"), requestor=False,
                                role=DESTINATION)]
        elif destination:
            participants = [_server(source, requestor=False, role=SOURCE),
                            _ae(destination, requestor=False, role=DESTINATION),
                            _actor(actor, requestor=True)]
        else:
            participants = [_server(source, requestor=False, role=SOURCE),
                            _actor(actor, requestor=True, role=DESTINATION)]
        completed = detail.get("completed", detail.get("sent"))
        objects = _study(event, kind, completed if isinstance(completed, int) else None)
    elif kind.shape is Shape.QUERY:
        participants = [_actor(actor, requestor=True, role=SOURCE),
                        _server(source, requestor=False, role=DESTINATION)]
        objects = [_query_object(event)]
        detail.pop("keys", None)
        detail.pop("how", None)
    elif kind.shape is Shape.STUDY:
        participants = [_actor(actor, requestor=True)]
        if actor.protocol != "pacs":
            participants.append(_server(source, requestor=False))
        objects = _study(event, kind, None)
    elif kind.shape is Shape.SECURITY:
        participants = [_actor(actor, requestor=True)]
        if actor.protocol != "pacs":
            participants.append(_server(source, requestor=False))
        subject = _security_subject(event)
        if subject:
            objects = [_Object(subject, USER_IDENTIFIER, "2", "11")]
            alert = f"{event.action}: {description}"
    elif kind.shape is Shape.PEER_ALERT:
        participants = [_server(source, requestor=False), _actor(actor, requestor=False)]
        node = actor.address or actor.text
        objects = [_Object(node, NODE_ID if actor.address else USER_IDENTIFIER, "2")]
        alert = f"{event.action}: {description}"
    else:  # Shape.AUTHENTICATION
        participants = [_actor(actor, requestor=True), _server(source, requestor=False)]
        reason = detail.get("reason")
        if reason and str(reason) not in description:
            description = f"{description}: {reason}"
    type_codes = [*kind.type_codes, Code(event.action, LOCAL_SCHEME, event.action)]
    return _Message(kind.event_id, kind.action_of(event), event.at, kind.outcome(event),
                    type_codes, description, participants, objects, detail, alert)


def _move_destination(event: FeedEvent) -> str | None:
    how = str(event.detail.get("how") or "")
    if how.startswith("C-MOVE to "):
        return how.removeprefix("C-MOVE to ").strip() or None
    return None


def _security_subject(event: FeedEvent) -> str | None:
    """The token or AE a security change is about (its detail's name, title or AE title)."""
    for key in ("name", "ae_title", "title", "subject"):
        value = event.detail.get(key)
        if value:
            return f"token:{value}" if event.action.startswith("token-") else str(value)
    return None


def application_activity(*, start: bool, at: datetime, source: AuditSource,
                         launcher: str | None) -> RenderedMessage:
    """110100 Application Activity (A.5.3.1): this server starting or stopping, with the
    user or process that started it as the Application Launcher."""
    participants = [_server(source, requestor=launcher is None, role=APPLICATION)]
    if launcher:
        participants.append(_Participant(launcher, requestor=True, role=APPLICATION_LAUNCHER))
    message = _Message(APPLICATION_ACTIVITY, "E", at, Outcome.SUCCESS,
                       [APPLICATION_START if start else APPLICATION_STOP],
                       "started" if start else "stopped", participants, [], {})
    return RenderedMessage(_xml(message, source, detail_budget=None, text_budget=None), at,
                           Outcome.SUCCESS)


def render(event: FeedEvent, source: AuditSource, *, max_bytes: int,
           group: Sequence[FeedEvent] = ()) -> RenderedMessage:
    """The audit message of one row (of the rows of ``group``, a transfer, when given; the
    message is then ``event``'s, their last), at most ``max_bytes`` of XML: when the whole
    message is longer, the details are shortened, then dropped, then the free texts clipped."""
    message = _compose(event, source, group or (event,))
    attempts: Sequence[tuple[int | None, int | None]] = (
        (None, None), (1024, None), (256, None), (0, 120), (0, 40))
    xml = b""
    for detail_budget, text_budget in attempts:
        xml = _xml(message, source, detail_budget=detail_budget, text_budget=text_budget)
        if len(xml) <= max_bytes:
            break
    return RenderedMessage(xml, message.at, message.outcome, event.id)


def messages_for(events: Sequence[FeedEvent], source: AuditSource, *, max_bytes: int
                 ) -> list[RenderedMessage]:
    """The messages of a batch of rows, in order. Stores of one actor, study and outcome are
    one message (the instances of one transfer, as A.5.3.7 describes it) standing for all
    their rows, at the place of the last one."""
    groups: dict[tuple[str, str, str], list[FeedEvent]] = {}
    order: list[tuple[str, str, str] | FeedEvent] = []
    for event in events:
        if event.action == "store" and event.study_instance_uid:
            key = (event.actor, event.study_instance_uid, store_action(event))
            if key in groups:
                order.remove(key)
            else:
                groups[key] = []
            groups[key].append(event)
            order.append(key)
        else:
            order.append(event)
    rendered = []
    for item in order:
        if isinstance(item, FeedEvent):
            rendered.append(render(item, source, max_bytes=max_bytes))
        else:
            group = groups[item]
            rendered.append(render(group[-1], source, max_bytes=max_bytes, group=group))
    return rendered


# -- XML -------------------------------------------------------------------------------------
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object, budget: int | None = None) -> str:
    """A value as XML can carry it (characters XML 1.0 forbids removed), within ``budget``."""
    text = _NOT_XML.sub("", str(value))
    if budget is not None and len(text) > budget:
        text = text[: max(budget - 3, 0)] + "..."
    return text


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": _text(code.value), "codeSystemName": code.scheme,
                                "originalText": _text(code.meaning)})


def _xml(message: _Message, source: AuditSource, *, detail_budget: int | None,
         text_budget: int | None) -> bytes:
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": message.action_code,
        "EventDateTime": _datetime(message.at),
        "EventOutcomeIndicator": str(int(message.outcome)),
    })
    _code(event, "EventID", message.event_id)
    for code in message.type_codes:
        _code(event, "EventTypeCode", code)
    if message.description:
        ET.SubElement(event, "EventOutcomeDescription").text = _text(message.description,
                                                                     text_budget)
    for participant in message.participants:
        attributes = {"UserID": _text(participant.user_id, text_budget and 200),
                      "UserIsRequestor": "true" if participant.requestor else "false"}
        if participant.alternative_user_id:
            attributes["AlternativeUserID"] = _text(participant.alternative_user_id)
        if participant.user_name:
            attributes["UserName"] = _text(participant.user_name, text_budget)
        if participant.access_point and participant.access_point_type:
            attributes["NetworkAccessPointID"] = _text(participant.access_point)
            attributes["NetworkAccessPointTypeCode"] = participant.access_point_type
        element = ET.SubElement(root, "ActiveParticipant", attributes)
        if participant.role is not None:
            _code(element, "RoleIDCode", participant.role)
    audit_source = ET.SubElement(root, "AuditSourceIdentification",
                                 {"AuditSourceID": _text(source.audit_source_id)})
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server
    detail = _detail_json(message.detail, detail_budget)
    for number, item in enumerate(message.objects):
        attributes = {"ParticipantObjectID": _text(item.object_id, text_budget and 256)}
        if item.type_code:
            attributes["ParticipantObjectTypeCode"] = item.type_code
        if item.role:
            attributes["ParticipantObjectTypeCodeRole"] = item.role
        if item.life_cycle:
            attributes["ParticipantObjectDataLifeCycle"] = item.life_cycle
        element = ET.SubElement(root, "ParticipantObjectIdentification", attributes)
        _code(element, "ParticipantObjectIDTypeCode", item.id_type)
        if item.name:
            ET.SubElement(element, "ParticipantObjectName").text = _text(item.name, text_budget)
        elif item.query is not None:
            query = item.query if detail_budget is None else item.query[:max(detail_budget, 64)]
            ET.SubElement(element, "ParticipantObjectQuery").text = _base64(query)
        details = list(item.details)
        if number == 0 and message.alert is not None:
            details.insert(0, ("Alert Description", _text(
                message.alert + (f" {detail}" if detail else ""),
                None if detail_budget is None else max(detail_budget, 80)).encode()))
        elif number == 0 and detail:
            details.append(("Detail", detail.encode()))
        for kind, value in details:
            ET.SubElement(element, "ParticipantObjectDetail",
                          {"type": kind, "value": _base64(value)})
        if item.instances is not None:
            description = ET.SubElement(element, "ParticipantObjectDescription")
            sop_class = ET.SubElement(description, "SOPClass",
                                      {"NumberOfInstances": str(item.instances)})
            if detail_budget is None:  # the list is the first thing left out (A.5.2 note)
                for uid in item.instance_uids:
                    ET.SubElement(sop_class, "Instance", {"UID": _text(uid, 64)})
    body: bytes = ET.tostring(root, encoding="unicode").encode()
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body


def _detail_json(detail: dict[str, Any], budget: int | None) -> str:
    """The row's details as compact JSON; over ``budget`` characters, clipped with ``...``
    (it is then no longer JSON: it says it was cut); nothing when the budget is 0."""
    if not detail or budget == 0:
        return ""
    text = json.dumps(detail, ensure_ascii=False, separators=(",", ":"), default=str)
    if budget is not None and len(text) > budget:
        text = text[: budget - 3] + "..."
    return text


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _datetime(at: datetime) -> str:
    """xsd:dateTime in UTC with its zone (A.5.2.5), to the millisecond."""
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
