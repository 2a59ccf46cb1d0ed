"""``pacs conformance``: the conformance statement's tables, made from the contexts the server
negotiates; every service row it prints is one a real server accepts."""

from __future__ import annotations

import subprocess
import sys

from pynetdicom import AE, build_context

from pacs.dimse.contexts import scp_contexts
from tests.support.server import PacsServer


def _statement(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pacs.cli", "conformance", *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def _rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| SOP class")
            and not line.startswith("| Transfer syntax")]


def test_every_negotiated_sop_class_is_listed_once_with_its_role() -> None:
    text = _statement("--ae-title", "ARCHIVE1", "--dimse-port", "104")
    rows = [r for r in _rows(text) if len(r) == 5]
    listed = [r[1] for r in rows]
    roles = {r[1]: r[2] for r in rows}

    assert "`ARCHIVE1`" in text and "TCP port 104" in text
    assert sorted(listed) == sorted({str(cx.abstract_syntax) for cx in scp_contexts()})
    assert roles["1.2.840.10008.1.1"] == "SCP"  # Verification
    assert roles["1.2.840.10008.5.1.4.1.2.2.2"] == "SCP"  # Study Root MOVE
    assert roles["1.2.840.10008.5.1.4.1.1.2"] == "SCP, SCU"  # CT Image Storage


def test_each_service_row_is_accepted_by_a_running_server(sqlite_server: PacsServer) -> None:
    services = [r for r in _rows(_statement()) if len(r) == 5 and r[2] == "SCP"]
    names = {cx.abstract_syntax: cx for cx in scp_contexts()}
    ae = AE(ae_title="CONFTEST")
    for row in services:
        ae.add_requested_context(row[1], [str(ts) for ts in names[row[1]].transfer_syntax])
    assoc = ae.associate("127.0.0.1", sqlite_server.dimse_port, ae_title=sqlite_server.ae_title)
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()

    assert services and accepted == {row[1] for row in services}


def test_a_storage_context_the_statement_lists_is_accepted_with_its_first_syntax(
        sqlite_server: PacsServer) -> None:
    text = _statement()
    first_syntax = next(r for r in _rows(text) if len(r) == 2)[1]
    ae = AE(ae_title="CONFTEST")
    ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.2", [first_syntax])]
    assoc = ae.associate("127.0.0.1", sqlite_server.dimse_port, ae_title=sqlite_server.ae_title)
    try:
        assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [first_syntax]
    finally:
        assoc.release()
