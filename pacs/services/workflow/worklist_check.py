"""The QA gate's worklist check: a study whose Study Instance UID or Accession Number names an
order of the worklist must be of the order's patient (the modality picked the wrong entry, or
someone typed the patient by hand)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacs.services.orders import CLOSED
from pacs.services.qa_checks import Finding
from storage.index import Repository
from storage.index.orders import OrderRecord
from storage.normalize import normalize_text

#: The patient attributes compared, keyword → the order's field.
COMPARED = {"PatientID": "patient_id", "PatientName": "patient_name",
            "PatientBirthDate": "patient_birth_date", "PatientSex": "patient_sex"}


def order_of(repository: Repository, study_instance_uid: str, accession_number: str | None
             ) -> OrderRecord | None:
    """The open order a study belongs to: by its Study Instance UID, else by its Accession
    Number when exactly one open order has it."""
    found = repository.orders.by_study_instance_uid(study_instance_uid)
    if found is not None and found.status not in CLOSED:
        return found
    if not accession_number:
        return None
    candidates = [o for o in repository.orders.by_accession_number(accession_number)
                  if o.status not in CLOSED]
    return candidates[0] if len(candidates) == 1 else None


def order_mismatch(order: OrderRecord, patient: Mapping[str, Any]) -> Finding | None:
    """The ``order-mismatch`` finding when the study's patient attributes (keyword → value)
    differ from its order's; names compare as PN matching does (case and accents aside), and
    a value missing on either side is not a difference."""
    differ: list[str] = []
    for keyword, field in COMPARED.items():
        ours, ordered = patient.get(keyword), getattr(order, field)
        if not ours or not ordered:
            continue
        same = (_name(str(ours)) == _name(str(ordered)) if keyword == "PatientName"
                else str(ours).strip() == str(ordered).strip())
        if not same:
            differ.append(f"{keyword} {ours!r} (ordered: {ordered!r})")
    if not differ:
        return None
    key = (f"Accession Number {order.accession_number!r}" if order.accession_number
           else f"Study Instance UID {order.study_instance_uid}")
    return Finding("order-mismatch",
                   f"the order {order.id} ({key}) is for another patient: {'; '.join(differ)}")


def correction_from(order: OrderRecord) -> dict[str, str | None]:
    """The order's patient attributes as a correction's changes (those it has)."""
    return {keyword: getattr(order, field) for keyword, field in COMPARED.items()
            if getattr(order, field)}


def _name(value: str) -> str:
    return normalize_text(value).rstrip("^ ")
