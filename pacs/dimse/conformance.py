"""The DICOM Conformance Statement's tables (PS3.2 Annex A), made from the presentation
contexts the server itself accepts (:func:`pacs.dimse.contexts.scp_contexts`): what
``pacs conformance`` prints, so the statement cannot drift from what is negotiated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import uid
from pynetdicom.presentation import PresentationContext

from pacs.dimse.contexts import is_storage_class, scp_contexts

#: What each non-storage service does here, by SOP class UID (the role is SCP unless said).
_SERVICES: dict[str, str] = {
    "1.2.840.10008.1.1": "C-ECHO",
    "1.2.840.10008.5.1.4.1.2.1.1": "C-FIND",
    "1.2.840.10008.5.1.4.1.2.2.1": "C-FIND",
    "1.2.840.10008.5.1.4.1.2.1.2": "C-MOVE (C-STORE sub-operations to a registered AE)",
    "1.2.840.10008.5.1.4.1.2.2.2": "C-MOVE (C-STORE sub-operations to a registered AE)",
    "1.2.840.10008.5.1.4.1.2.1.3": "C-GET (C-STORE sub-operations on the same association)",
    "1.2.840.10008.5.1.4.1.2.2.3": "C-GET (C-STORE sub-operations on the same association)",
    "1.2.840.10008.5.1.4.31": "C-FIND (scheduled procedure steps of the orders)",
    "1.2.840.10008.3.1.2.3.3": "N-CREATE, N-SET",
    "1.2.840.10008.1.20.1": "N-ACTION in; N-EVENT-REPORT out (same association, else a new "
                            "one to the registered AE)",
}
_STORAGE = "C-STORE in; C-STORE out as C-MOVE / C-GET sub-operations and routing"


@dataclass(frozen=True)
class SopClassRow:
    """One SOP class the server negotiates."""

    name: str
    uid: str
    roles: str  # "SCP", or "SCP, SCU" for the storage classes
    services: str
    transfer_syntaxes: tuple[str, ...]


def sop_class_rows(contexts: Sequence[PresentationContext] | None = None) -> list[SopClassRow]:
    """A row per abstract syntax of ``contexts`` (default: the server's own), non-storage
    services first, then the storage SOP classes by name."""
    rows: dict[str, SopClassRow] = {}
    for context in scp_contexts() if contexts is None else contexts:
        sop_class = str(context.abstract_syntax)
        storage = is_storage_class(sop_class)
        rows[sop_class] = SopClassRow(
            name=_name(sop_class), uid=sop_class,
            roles="SCP, SCU" if storage else "SCP",
            services=_STORAGE if storage else _SERVICES.get(sop_class, ""),
            transfer_syntaxes=tuple(str(ts) for ts in context.transfer_syntax),
        )
    return sorted(rows.values(), key=lambda r: (r.services == _STORAGE, r.name))


def statement(*, ae_title: str, dimse_port: int, tls_port: int | None,
              accept_unknown: bool, contexts: Sequence[PresentationContext] | None = None
              ) -> str:
    """The conformance statement's tables, as Markdown."""
    rows = sop_class_rows(contexts)
    storage_syntaxes = next((r.transfer_syntaxes for r in rows if r.services == _STORAGE), ())
    lines = [
        "# DICOM Conformance Statement (generated from the server's presentation contexts)",
        "",
        f"Application Entity `{ae_title}`: accepts associations on TCP port {dimse_port}"
        + (f" and DICOM TLS on {tls_port}" if tls_port else "") + "; initiates them to the "
        "AEs of its registry (C-MOVE destinations, routing targets, storage commitment "
        "reports).",
        "",
        "## Services",
        "",
        "| SOP class | UID | Role | DIMSE | Transfer syntaxes |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        syntaxes = ("the storage transfer syntaxes below" if row.services == _STORAGE
                    else ", ".join(_name(ts) for ts in row.transfer_syntaxes))
        lines.append(f"| {row.name} | {row.uid} | {row.roles} | {row.services} | {syntaxes} |")
    lines += ["", "## Storage transfer syntaxes (in order of preference)", "",
              "| Transfer syntax | UID |", "|---|---|"]
    lines += [f"| {_name(ts)} | {ts} |" for ts in storage_syntaxes]
    lines += ["", "Storage SOP classes not listed (retired, private, newer than this list) "
              + ("are accepted when a requestor proposes them, with the same transfer syntaxes "
                 "(`PACS_ACCEPT_UNKNOWN_SOP_CLASSES=false` turns this off)." if accept_unknown
                 else "are refused (`PACS_ACCEPT_UNKNOWN_SOP_CLASSES=false`); they can still "
                 "be retrieved by C-GET if they were imported."), ""]
    return "\n".join(lines)


def _name(value: str) -> str:
    known = uid.UID(value)
    return known.name if known.type else value
