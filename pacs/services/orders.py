"""Imaging orders from the RIS: one requested procedure each (PS3.3 C.4.11), with its
scheduled procedure steps (PS3.3 C.4.10), the entries a Modality Worklist (PS3.4 K.6) will
answer and the QA gate will match arriving studies against.

Orders come as a body of DICOM keywords (``PatientID``, ``AccessionNumber``,
``ScheduledProcedureStepSequence`` with ``Modality``, ``ScheduledStationAETitle``, ...), from
the REST API (``POST /api/orders``) or translated from HL7 v2 ORM^O01 / OMI^O23 by
:mod:`pacs.hl7`; both front ends make one call here. Every value is checked as DICOM would
check it (PS3.5 6.2: the VR's length and characters, dates ``YYYYMMDD``, times
``HHMMSS[.FFFFFF]``, no backslash in a single value) and an error names the keyword.

Rules:

* A new order needs ``PatientID`` and at least one step (at most :data:`MAX_STEPS`); each step
  needs ``Modality`` and ``ScheduledStationAETitle``. ``StudyInstanceUID``,
  ``RequestedProcedureID`` and each ``ScheduledProcedureStepID`` are made here when absent.
* A ``StudyInstanceUID`` belongs to one order, cancelled ones included (the index keeps it
  unique: a cancelled order's study is still named in the audit trail); an
  ``AccessionNumber`` to one order that is not cancelled. Either taken: :class:`Conflict`.
* An update changes the keywords given (``None`` clears an optional one). Its steps are
  merged by ``ScheduledProcedureStepID`` (REST ``PATCH``: an item with a known id changes
  that step, any other item is a new step), or replace the order's steps (HL7 XO: the
  message carries the whole order; an item without an id takes the id of the step at its
  position, steps not carried are removed). A cancelled order cannot be changed.
* Cancelling sets the order ``cancelled`` and every step ``CANCELED``; cancelling a cancelled
  order changes nothing and answers the order (idempotent). HL7's DC (discontinue) sets
  ``discontinued`` / ``DISCONTINUED`` alike.
* Every change writes its audit event (``order-create``, ``order-update``, ``order-cancel``)
  in its own transaction.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.uid import generate_uid

from pacs.services.errors import Conflict, InvalidQuery, NotFound
from pacs.services.units import unit_of_work
from storage.index import (
    Index,
    IndexDataError,
    OrderFilter,
    OrderRecord,
    Repository,
    StepRecord,
)
from storage.worklist import StepStatus  # the worklist's defined terms (PS3.3 C.4.10)

# the records: what the front ends format (they never import the index themselves)
__all__ = ["MAX_STEPS", "OrderFilter", "OrderRecord", "OrderReference", "OrderService",
           "OrderStatus", "StepRecord", "StepStatus", "StepsMode"]

MAX_STEPS = 100
"""Scheduled procedure steps in one order: far more than a procedure ever has."""


class OrderStatus(StrEnum):
    """The order's status (``imaging_order.status``)."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "in progress"
    COMPLETED = "completed"
    DISCONTINUED = "discontinued"
    CANCELLED = "cancelled"


class StepsMode(StrEnum):
    """How an update's ScheduledProcedureStepSequence meets the order's steps."""

    MERGE = "merge"  # by id: known ids change, others are new; the rest stay
    REPLACE = "replace"  # the whole list: by id, else by position; the rest are removed


CLOSED = frozenset({OrderStatus.CANCELLED.value, OrderStatus.DISCONTINUED.value})
"""Order statuses that no longer name a study to come (they cannot be changed either)."""


@dataclass(frozen=True)
class OrderReference:
    """How an HL7 message names an existing order: its filler or placer order number
    (ORC-3 / ORC-2), or its AccessionNumber; tried in that order, among orders not
    cancelled."""

    placer_order_number: str | None = None
    filler_order_number: str | None = None
    accession_number: str | None = None

    def __str__(self) -> str:
        named = [f"{name} {value!r}" for name, value in (
            ("filler order number", self.filler_order_number),
            ("placer order number", self.placer_order_number),
            ("AccessionNumber", self.accession_number)) if value]
        return " / ".join(named) or "no order number"


# -- DICOM value checks (PS3.5 6.2) ----------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CS = re.compile(r"[A-Z0-9 _]*")
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]*")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_SHOWN = 40  # characters of a refused value repeated in an error message


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def _text(where: str, value: str, limit: int) -> str:
    if "\\" in value:
        raise InvalidQuery(f"{where}: a single value, without backslash (\\)")
    if _CONTROL.search(value):
        raise InvalidQuery(f"{where}: control characters are not allowed")
    if len(value) > limit:
        raise InvalidQuery(f"{where}: at most {limit} characters (got {len(value)})")
    return value


def _lo(limit: int) -> Callable[[str, str], str]:
    def check(where: str, value: str) -> str:
        return _text(where, value, limit)
    return check


def _cs(where: str, value: str) -> str:
    value = _text(where, value, 16)
    if not _CS.fullmatch(value):
        raise InvalidQuery(f"{where}: {_shown(value)} is not a code string (upper-case "
                           "letters, digits, space, underscore; PS3.5 6.2 CS)")
    return value


def _ae(where: str, value: str) -> str:
    value = _text(where, value, 16)
    if not _AE.fullmatch(value):
        raise InvalidQuery(f"{where}: {_shown(value)} is not an AE title (printable ASCII, "
                           "PS3.5 6.2 AE)")
    return value


def _pn(where: str, value: str) -> str:
    if "\\" in value:
        raise InvalidQuery(f"{where}: a single value, without backslash (\\)")
    if _CONTROL.search(value.replace("\x1b", "")):
        raise InvalidQuery(f"{where}: control characters are not allowed")
    groups = value.split("=")
    if len(groups) > 3:
        raise InvalidQuery(f"{where}: at most 3 component groups (alphabetic=ideographic="
                           "phonetic, PS3.5 6.2.1)")
    for group in groups:
        if len(group) > 64:
            raise InvalidQuery(f"{where}: at most 64 characters per component group "
                               f"(got {len(group)})")
        if group.count("^") > 4:
            raise InvalidQuery(f"{where}: at most 5 components (family^given^middle^prefix^"
                               "suffix, PS3.5 6.2.1)")
    return value


def _da(where: str, value: str) -> str:
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise InvalidQuery(f"{where}: {_shown(value)} is not a date YYYYMMDD "
                           "(PS3.5 6.2 DA)") from None
    return value


def _tm(where: str, value: str) -> str:
    match = _TIME.fullmatch(value)
    valid = match is not None and int(match[1]) < 24 and (
        match[2] is None or int(match[2]) < 60) and (match[3] is None or int(match[3]) < 60)
    if match is not None and match[4] and match[3] is None:
        valid = False  # a fraction only after the seconds
    if not valid:
        raise InvalidQuery(f"{where}: {_shown(value)} is not a time HHMMSS[.FFFFFF] "
                           "(PS3.5 6.2 TM)")
    return value


def _ui(where: str, value: str) -> str:
    if len(value) > 64 or not _UID.fullmatch(value):
        raise InvalidQuery(f"{where}: {_shown(value)} is not a UID (digits and dots, at most "
                           "64 characters, PS3.5 9.1)")
    return value


def _sex(where: str, value: str) -> str:
    if value not in {"M", "F", "O"}:
        raise InvalidQuery(f"{where}: {_shown(value)} is not M, F or O (PS3.3 C.7.1.1)")
    return value


def _step_status(where: str, value: str) -> str:
    if value not in StepStatus.__members__.values():
        raise InvalidQuery(f"{where}: {_shown(value)} is not one of "
                           f"{', '.join(StepStatus)} (PS3.3 C.4.10)")
    return value


@dataclass(frozen=True)
class _Field:
    column: str
    check: Callable[[str, str], str]
    required: bool = False


ORDER_FIELDS: dict[str, _Field] = {
    "PatientID": _Field("patient_id", _lo(64), required=True),
    "IssuerOfPatientID": _Field("issuer_of_patient_id", _lo(64)),
    "PatientName": _Field("patient_name", _pn),
    "PatientBirthDate": _Field("patient_birth_date", _da),
    "PatientSex": _Field("patient_sex", _sex),
    "AccessionNumber": _Field("accession_number", _lo(16)),  # SH
    "RequestedProcedureID": _Field("requested_procedure_id", _lo(16)),  # SH
    "RequestedProcedureDescription": _Field("requested_procedure_description", _lo(64)),
    "StudyInstanceUID": _Field("study_instance_uid", _ui),
    "ReferringPhysicianName": _Field("referring_physician_name", _pn),
    "PlacerOrderNumberImagingServiceRequest": _Field("placer_order_number", _lo(64)),
    "FillerOrderNumberImagingServiceRequest": _Field("filler_order_number", _lo(64)),
}
"""The order's keywords (PS3.3 C.4.11, C.7.1.1): column and check (the VR's, PS3.5 6.2)."""

STEP_FIELDS: dict[str, _Field] = {
    "ScheduledStationAETitle": _Field("station_ae_title", _ae, required=True),
    "ScheduledStationName": _Field("station_name", _lo(16)),  # SH
    "Modality": _Field("modality", _cs, required=True),
    "ScheduledProcedureStepStartDate": _Field("start_date", _da),
    "ScheduledProcedureStepStartTime": _Field("start_time", _tm),
    "ScheduledProcedureStepID": _Field("step_id", _lo(16)),  # SH
    "ScheduledProcedureStepDescription": _Field("description", _lo(64)),
    "ScheduledPerformingPhysicianName": _Field("performing_physician_name", _pn),
    "ScheduledProcedureStepStatus": _Field("status", _step_status),
}
"""A scheduled procedure step's keywords (PS3.3 C.4.10)."""

STEPS = "ScheduledProcedureStepSequence"


def _value(where: str, field: _Field, raw: Any) -> str | None:
    """The checked value (None: cleared); leading and trailing spaces are not significant
    (PS3.5 6.2)."""
    if raw is None:
        if field.required:
            raise InvalidQuery(f"{where}: required, cannot be null")
        return None
    if not isinstance(raw, str):
        raise InvalidQuery(f"{where}: must be a string")
    value = raw.strip(" ")
    if not value:
        if field.required:
            raise InvalidQuery(f"{where}: required, cannot be empty")
        return None
    return field.check(where, value)


def _unknown(where: str, body: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        shown = ", ".join(repr(key[:_SHOWN]) for key in unknown[:5])
        raise InvalidQuery(f"{where}unknown keyword{'s' if len(unknown) > 1 else ''}: {shown}")


def _order_columns(body: Mapping[str, Any], *, new: bool) -> dict[str, Any]:
    _unknown("", body, {**ORDER_FIELDS, STEPS: None})
    columns: dict[str, Any] = {}
    for keyword, field in ORDER_FIELDS.items():
        if keyword in body:
            columns[field.column] = _value(keyword, field, body[keyword])
        elif new and field.required:
            raise InvalidQuery(f"{keyword}: required")
    return columns


def _step_columns(body: Any, position: int, *, new: bool) -> dict[str, Any]:
    where = f"{STEPS}[{position}]"
    if not isinstance(body, Mapping):
        raise InvalidQuery(f"{where}: must be an object of DICOM keywords")
    _unknown(f"{where}: ", body, STEP_FIELDS)
    columns: dict[str, Any] = {}
    for keyword, field in STEP_FIELDS.items():
        if keyword in body:
            columns[field.column] = _value(f"{where}.{keyword}", field, body[keyword])
        elif new and field.required:
            raise InvalidQuery(f"{where}.{keyword}: required")
    return columns


def _steps(body: Mapping[str, Any], *, required: bool) -> builtins.list[Any] | None:
    if STEPS not in body:
        if required:
            raise InvalidQuery(f"{STEPS}: required, with at least one item")
        return None
    items = body[STEPS]
    if not isinstance(items, list):
        raise InvalidQuery(f"{STEPS}: must be a list of items")
    if required and not items:
        raise InvalidQuery(f"{STEPS}: at least one item")
    if len(items) > MAX_STEPS:
        raise InvalidQuery(f"{STEPS}: at most {MAX_STEPS} items (got {len(items)})")
    return items


def _new_id(prefix: str) -> str:
    """A RequestedProcedureID / ScheduledProcedureStepID (SH, at most 16 characters)."""
    return prefix + secrets.token_hex(6).upper()


def _check_unique_ids(steps: Sequence[Mapping[str, Any]]) -> None:
    seen: set[str] = set()
    for position, step in enumerate(steps, 1):
        step_id = step.get("step_id")
        if step_id is None:
            continue
        if step_id in seen:
            raise InvalidQuery(f"{STEPS}[{position}].ScheduledProcedureStepID: {step_id!r} "
                               "is given twice")
        seen.add(step_id)


def describe(order: OrderRecord, who: str) -> dict[str, Any]:
    """An order for the audit trail's detail."""
    return {"order_id": order.id, "accession_number": order.accession_number,
            "study_instance_uid": order.study_instance_uid, "patient_id": order.patient_id,
            "status": order.status, "source": order.source, "who": who}


@dataclass(frozen=True)
class OrderedStudy:
    """An order and the study it names, with its state (None while nothing of it arrived)."""

    order: OrderRecord
    study_instance_uid: str | None
    study_state: str | None


class OrderService:
    """Creates, changes, cancels and reads imaging orders (see the module's docstring).
    Holds no state of its own: thread-safe; each call is one unit of work."""

    def __init__(self, *, index: Index) -> None:
        self.index = index

    def _unit(self, *, write: bool = False) -> AbstractContextManager[Repository]:
        return unit_of_work(self.index, write=write)

    # -- changes ---------------------------------------------------------------------------
    def create(self, body: Mapping[str, Any], who: str, source: str = "rest") -> OrderRecord:
        """A new order from ``body`` (DICOM keywords); :class:`InvalidQuery` naming the
        keyword, :class:`Conflict` when its StudyInstanceUID or AccessionNumber is taken."""
        columns = _order_columns(body, new=True)
        items = _steps(body, required=True) or []
        steps = [_step_columns(item, position, new=True)
                 for position, item in enumerate(items, 1)]
        _check_unique_ids(steps)
        for step in steps:
            step["step_id"] = step.get("step_id") or _new_id("SPS")
            step["status"] = step.get("status") or StepStatus.SCHEDULED.value
        columns["study_instance_uid"] = columns.get("study_instance_uid") or generate_uid()
        columns["requested_procedure_id"] = (columns.get("requested_procedure_id")
                                             or _new_id("RP"))
        try:
            with self._unit(write=True) as repository:
                self._check_free(repository, columns, exclude=None)
                order = repository.orders.create(
                    columns, steps, status=OrderStatus.SCHEDULED.value, source=source)
                repository.audit.append(
                    actor=who, action="order-create", outcome="created",
                    study_instance_uid=order.study_instance_uid, detail=describe(order, who))
                return order
        except IndexDataError:
            # a writer on another connection took the Study Instance UID meanwhile
            with self._unit() as repository:
                self._check_free(repository, columns, exclude=None)
            raise

    def update(self, order: int | OrderReference, body: Mapping[str, Any], who: str, *,
               steps_mode: StepsMode = StepsMode.MERGE) -> OrderRecord:
        """Change the keywords ``body`` gives (see the module's docstring);
        :class:`NotFound`, :class:`InvalidQuery`, :class:`Conflict`."""
        columns = _order_columns(body, new=False)
        items = _steps(body, required=False)
        if items == [] and steps_mode is StepsMode.REPLACE:
            raise InvalidQuery(f"{STEPS}: at least one item (an order keeps one step)")
        with self._unit(write=True) as repository:
            current = self._find(repository, order)
            if current.status in CLOSED:
                raise Conflict(f"order {current.id} is {current.status}: it cannot be changed")
            if "study_instance_uid" in columns and columns["study_instance_uid"] is None:
                raise InvalidQuery("StudyInstanceUID: cannot be cleared")
            if "requested_procedure_id" in columns and columns["requested_procedure_id"] is None:
                raise InvalidQuery("RequestedProcedureID: cannot be cleared")
            self._check_free(repository, columns, exclude=current.id)
            if columns:
                repository.orders.update(current.id, columns)
            if items is not None:
                self._update_steps(repository, current, items, steps_mode)
            changed = repository.orders.get(current.id)
            assert changed is not None
            repository.audit.append(
                actor=who, action="order-update", outcome="updated",
                study_instance_uid=changed.study_instance_uid,
                detail={**describe(changed, who), "changed": sorted(
                    key for key in body if key != STEPS) + ([STEPS] if items is not None
                                                             else [])})
            return changed

    def cancel(self, order: int | OrderReference, who: str, *,
               discontinue: bool = False) -> OrderRecord:
        """Cancel an order (HL7 CA / OC; DC with ``discontinue``): the order ``cancelled``
        (``discontinued``), every step ``CANCELED`` (``DISCONTINUED``). An order cancelled or
        discontinued already is answered as it is, unchanged and not audited again."""
        status, step_status = ((OrderStatus.DISCONTINUED, StepStatus.DISCONTINUED)
                               if discontinue else (OrderStatus.CANCELLED, StepStatus.CANCELED))
        with self._unit(write=True) as repository:
            current = self._find(repository, order, closed_too=True)
            if current.status in CLOSED:
                return current
            repository.orders.set_status(current.id, status.value, step_status=step_status.value)
            cancelled = repository.orders.get(current.id)
            assert cancelled is not None
            repository.audit.append(
                actor=who, action="order-cancel", outcome=status.value,
                study_instance_uid=cancelled.study_instance_uid,
                detail=describe(cancelled, who))
            return cancelled

    # -- reads -------------------------------------------------------------------------------
    def get(self, order_id: int) -> OrderRecord:
        with self._unit() as repository:
            found = repository.orders.get(order_id)
        if found is None:
            raise NotFound(f"no order {order_id}")
        return found

    def list(self, criteria: OrderFilter) -> builtins.list[OrderRecord]:
        """A page of orders matching ``criteria`` (dates checked as DA), newest first."""
        for name, value in (("date_from", criteria.date_from), ("date_to", criteria.date_to)):
            if value is not None:
                _da(name, value)
        with self._unit() as repository:
            return repository.orders.list(criteria)

    def with_studies(self, criteria: OrderFilter) -> builtins.list[OrderedStudy]:
        """:meth:`list`, each order with the study it names (by its Study Instance UID, else
        its Accession Number, as the QA gate's worklist check finds it) and that study's
        state; None while nothing of it has arrived: the worklist page."""
        orders = self.list(criteria)
        with self._unit() as repository:
            states = repository.studies.states_of(o.study_instance_uid for o in orders)
            by_accession = repository.studies.with_accession_numbers(
                o.accession_number for o in orders
                if o.study_instance_uid not in states and o.accession_number)
        lines: builtins.list[OrderedStudy] = []
        for order in orders:
            if order.study_instance_uid in states:
                lines.append(OrderedStudy(order, order.study_instance_uid,
                                          states[order.study_instance_uid]))
            elif order.accession_number in by_accession:
                uid, state = by_accession[order.accession_number]
                lines.append(OrderedStudy(order, uid, state))
            else:
                lines.append(OrderedStudy(order, None, None))
        return lines

    def by_accession_number(self, accession_number: str) -> builtins.list[OrderRecord]:
        """The orders with this AccessionNumber, cancelled ones too (oldest first)."""
        with self._unit() as repository:
            return repository.orders.by_accession_number(accession_number)

    def by_study_instance_uid(self, study_instance_uid: str) -> OrderRecord | None:
        with self._unit() as repository:
            return repository.orders.by_study_instance_uid(study_instance_uid)

    # -- inside a unit of work ---------------------------------------------------------------
    @staticmethod
    def _find(repository: Repository, order: int | OrderReference, *,
              closed_too: bool = False) -> OrderRecord:
        if isinstance(order, int):
            found = repository.orders.get(order)
            if found is None:
                raise NotFound(f"no order {order}")
            return found
        candidates: builtins.list[OrderRecord] = []
        if order.filler_order_number:
            candidates = repository.orders.by_order_number(filler=order.filler_order_number)
        if not candidates and order.placer_order_number:
            candidates = repository.orders.by_order_number(placer=order.placer_order_number)
        if not candidates and order.accession_number:
            candidates = repository.orders.by_accession_number(order.accession_number)
        open_ = [found for found in candidates if found.status not in CLOSED]
        if len(open_) > 1:
            raise Conflict(f"{order} names {len(open_)} orders "
                           f"({', '.join(str(found.id) for found in open_[:5])})")
        if open_:
            return open_[0]
        if closed_too and candidates:
            return candidates[-1]
        raise NotFound(f"no order with {order}")

    @staticmethod
    def _check_free(repository: Repository, columns: Mapping[str, Any], *,
                    exclude: int | None) -> None:
        """:class:`Conflict` when another order has the study or (not cancelled) the
        accession; the keys are held until the transaction ends (concurrent writers)."""
        uid = columns.get("study_instance_uid")
        repository.orders.claim(*(f"{name}={columns[name]}" for name in (
            "study_instance_uid", "accession_number") if columns.get(name)))
        if uid:
            holder = repository.orders.by_study_instance_uid(uid)
            if holder is not None and holder.id != exclude:
                raise Conflict(f"StudyInstanceUID {uid} belongs to order {holder.id} "
                               f"({holder.status})")
        accession = columns.get("accession_number")
        if accession:
            for holder in repository.orders.by_accession_number(accession):
                if holder.id != exclude and holder.status not in CLOSED:
                    raise Conflict(f"AccessionNumber {accession!r} belongs to order "
                                   f"{holder.id}")

    @staticmethod
    def _update_steps(repository: Repository, current: OrderRecord, items: builtins.list[Any],
                      mode: StepsMode) -> None:
        known = {step.step_id for step in current.steps}
        steps = []
        for position, item in enumerate(items, 1):
            step = _step_columns(item, position, new=False)
            if mode is StepsMode.REPLACE and not step.get("step_id") and position <= len(
                    current.steps):
                step["step_id"] = current.steps[position - 1].step_id
            if step.get("step_id") not in known:
                for keyword in ("Modality", "ScheduledStationAETitle"):
                    if STEP_FIELDS[keyword].column not in step:
                        raise InvalidQuery(f"{STEPS}[{position}].{keyword}: required for a "
                                           "new step")
                step["step_id"] = step.get("step_id") or _new_id("SPS")
                step["status"] = step.get("status") or StepStatus.SCHEDULED.value
            for keyword in ("Modality", "ScheduledStationAETitle"):
                column = STEP_FIELDS[keyword].column
                if column in step and step[column] is None:
                    raise InvalidQuery(f"{STEPS}[{position}].{keyword}: cannot be cleared")
            if "status" in step and step["status"] is None:
                step["status"] = StepStatus.SCHEDULED.value
            steps.append(step)
        _check_unique_ids(steps)
        if mode is StepsMode.REPLACE:
            repository.orders.remove_steps(current.id, [step["step_id"] for step in steps])
        elif len(known | {step["step_id"] for step in steps}) > MAX_STEPS:
            raise InvalidQuery(f"{STEPS}: an order has at most {MAX_STEPS} steps")
        repository.orders.upsert_steps(current.id, steps)
