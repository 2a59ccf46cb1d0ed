"""``--log-format json`` of a real ``pacs serve`` with a DIMSE worker process: every line of
its log (the listening process's, the worker's, uvicorn's) is one JSON object; a C-STORE's
lines carry their association's id, on each thread that serves it; an HTTP request's line
carries the request id the client sent, which the answer echoes (a made one when it was
not sane)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.server import PacsServer
from tests.support.wait import until

REQUEST_ID = "trace-4f1c2a9e-7b"


@pytest.fixture
def json_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    running = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                         extra_args=["--log-format", "json", "--dimse-processes", "2"]).start()
    try:
        yield running
    finally:
        running.stop()


def _lines(server: PacsServer) -> list[dict[str, Any]]:
    text = server.log()
    assert text.endswith("\n")
    entries = [json.loads(line) for line in text.splitlines()]  # each line whole JSON
    for entry in entries:
        assert {"time", "level", "logger", "message", "process"} <= entry.keys(), entry
    return entries


def _store(server: PacsServer, workdir: Path, name: str) -> None:
    """One association: a good instance and one refused (0xC000, logged as a warning by
    the thread that served the C-STORE)."""
    good = f.write_part10(f.ct_instance(PatientID=f"LOG-{name}", Rows=16, Columns=16),
                          workdir / f"{name}-good.dcm")
    bad = f.write_part10(f.invalid_uid_instance("1.2.abc", keyword="StudyInstanceUID"),
                         workdir / f"{name}-bad.dcm")
    result = dcmtk.storescu(server.dimse_port, [good, bad], workdir=workdir)
    assert dcmtk.successes(result) == 1, dcmtk.status_lines(result)


def test_json_lines_with_association_and_request_ids(json_server: PacsServer,
                                                     tmp_path: Path) -> None:
    # two associations: the listening process serves one, the worker process the other
    _store(json_server, tmp_path, "first")
    _store(json_server, tmp_path, "second")
    answer = httpx.get(f"{json_server.base_url}/dicom-web/studies",
                       headers={"X-Request-ID": REQUEST_ID}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == REQUEST_ID
    insane = httpx.get(f"{json_server.base_url}/dicom-web/studies",
                       headers={"X-Request-ID": "x" * 129}, timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["x-request-id"])
    boundary = "log-boundary"
    refused = httpx.post(  # one part that is not DICOM: a warning logged by a worker thread
        f"{json_server.base_url}/dicom-web/studies", timeout=30,
        content=(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                 + b"\x00not a data set" * 20 + f"\r\n--{boundary}--\r\n".encode()),
        headers={"X-Request-ID": f"{REQUEST_ID}-stow", "Accept": "application/dicom+json",
                 "Content-Type": f'multipart/related; type="application/dicom"; '
                                 f"boundary={boundary}"})
    assert refused.status_code == 409, refused.text

    def finished() -> list[dict[str, Any]] | None:
        entries = _lines(json_server)
        failed = [e for e in entries if re.match(r"C-STORE .* failed \(0xC000\)", e["message"])]
        return entries if len(failed) == 2 else None

    entries = until("both refused C-STOREs logged", finished)
    opened = [e for e in entries if e["message"].startswith("association from STORESCU")]
    failed = [e for e in entries if re.match(r"C-STORE .* failed \(0xC000\)", e["message"])]
    assert len(opened) == 2 and len({e["process"] for e in opened}) == 2  # and a worker's
    ids = {e["association_id"] for e in opened}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    # each failure is logged by the thread serving the C-STORE, under its association's id
    assert {e["association_id"] for e in failed} == ids
    for store in failed:
        (association,) = [e for e in opened if e["association_id"] == store["association_id"]]
        assert store["process"] == association["process"]
    access = [e for e in entries if e["logger"] == "pacs.http.access"]
    (sent,) = [e for e in access if e.get("request_id") == REQUEST_ID]
    assert sent["message"] == f"GET /dicom-web/studies 200 {sent['message'].split()[-2]} ms"
    (warned,) = [e for e in entries if e["message"].startswith("STOW-RS part 1 from")]
    assert warned["request_id"] == f"{REQUEST_ID}-stow" and warned["level"] == "WARNING"
    assert not [e for e in entries if "request_id" in e and "association_id" in e]
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's lines too
