"""The change feed of a running ``pacs serve`` (SQLite and PostgreSQL): storescu and STOW-RS
store, the QA REST API accepts and rejects, and a poller reads ``/api/changes`` page by page
from its last number without loss or repeats; the Microsoft-shaped ``/dicom-web/changefeed``
says the same; bad parameters answer 400; old changes are pruned."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.factories.datasets import ct_instance, make_uid, to_part10_bytes
from tests.support import dcmtk
from tests.support.server import PacsServer, bearer, token
from tests.support.wait import until

BOUNDARY = "change-feed-boundary"


@dataclass
class Archive:
    server: PacsServer
    workdir: Path
    http: httpx.Client

    def store(self, *datasets: Dataset) -> None:
        dcmtk.store_datasets(self.server.dimse_port, datasets, workdir=self.workdir)

    def stow(self, ds: Dataset) -> None:
        body = (f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + to_part10_bytes(ds) + f"\r\n--{BOUNDARY}--\r\n".encode())
        answer = self.http.post(
            f"{self.server.base_url}/dicom-web/studies", content=body,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                     f"boundary={BOUNDARY}",
                     "Accept": "application/dicom+json"})
        assert answer.status_code == 200, answer.text

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(f"{self.server.base_url}{path}", params=params)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(f"{self.server.base_url}{path}", **kwargs)

    def poll_all(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Every change after ``since``, read ``limit`` at a time from the last number."""
        found: list[dict[str, Any]] = []
        while True:
            answer = self.get("/api/changes", since=since, limit=limit)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            assert len(page["changes"]) <= limit
            if not page["changes"]:
                assert page["last"] == since
                return found
            found += page["changes"]
            since = page["changes"][-1]["seq"]


@pytest.fixture(scope="module")
def archive(module_database_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("changes")
    server = PacsServer(data_dir=root / "data", database_url=module_database_url,
                        extra_args=["--stable-seconds", "3600"]).start()
    try:
        with httpx.Client(timeout=60) as http:
            yield Archive(server, root, http)
    finally:
        server.stop()


def _last(archive: Archive) -> int:
    answer = archive.get("/api/changes", limit=1, since=2**40)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["last"])


def _events(changes: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(c["event"], c["SOPInstanceUID"]) for c in changes]


def test_stores_are_read_page_by_page_without_loss_or_repeats(archive: Archive) -> None:
    start = _last(archive)
    first, second = make_uid("cf", "s1"), make_uid("cf", "s2")
    sent = [ct_instance(PatientID="CF-1", StudyInstanceUID=first, InstanceNumber=n)
            for n in (1, 2, 3)]
    archive.store(*sent)
    later = ct_instance(PatientID="CF-2", StudyInstanceUID=second, InstanceNumber=1)
    archive.stow(later)

    changes = archive.poll_all(start, limit=2)
    assert [c["seq"] for c in changes] == list(range(start + 1, start + len(changes) + 1))
    assert _events(changes) == [
        ("stored", str(sent[0].SOPInstanceUID)), ("archived", None),  # auto mode: at once
        ("stored", str(sent[1].SOPInstanceUID)), ("stored", str(sent[2].SOPInstanceUID)),
        ("stored", str(later.SOPInstanceUID)), ("archived", None),
    ]
    assert [c["StudyInstanceUID"] for c in changes] == [first] * 4 + [second] * 2
    assert changes[0]["SeriesInstanceUID"] == str(sent[0].SeriesInstanceUID)
    assert changes[0]["time"].endswith("Z")
    # resuming anywhere in the middle gives exactly the rest
    assert archive.poll_all(changes[2]["seq"], limit=100) == changes[3:]
    # a re-sent instance (kept, not replaced) is no change
    archive.store(sent[0])
    assert archive.poll_all(changes[-1]["seq"], limit=100) == []


def test_review_actions_are_changes(archive: Archive) -> None:
    held, rejected = make_uid("cf", "held"), make_uid("cf", "rejected")
    archive.store(ct_instance(PatientID="CF-P", PatientName="Doe^Jane", StudyInstanceUID=held,
                              PatientBirthDate="19800202"))
    start = _last(archive)
    # the same PatientID with another name: quarantined by the QA gate
    archive.store(ct_instance(PatientID="CF-P", PatientName="Smith^Other",
                              PatientBirthDate="19800202", StudyInstanceUID=rejected))
    archive.store(ct_instance(PatientID="CF-Q", PatientName="Other^Q",
                              StudyInstanceUID=make_uid("cf", "accepted")))
    changes = archive.poll_all(start, limit=3)
    assert [c["event"] for c in changes] == ["stored", "archived", "quarantined",
                                             "stored", "archived"]
    assert archive.post(f"/api/studies/{rejected}/accept").status_code == 200
    answer = archive.post(f"/api/studies/{rejected}/reject", json={"reason": "wrong patient"})
    assert answer.status_code == 200, answer.text
    more = archive.poll_all(changes[-1]["seq"], limit=10)
    assert [(c["event"], c["StudyInstanceUID"], c["SOPInstanceUID"]) for c in more] == [
        ("archived", rejected, None), ("rejected", rejected, None)]


def test_the_microsoft_shaped_change_feed(archive: Archive) -> None:
    study = make_uid("cf", "ms")
    start = _last(archive)
    instance = ct_instance(PatientID="CF-MS", StudyInstanceUID=study, InstanceNumber=1)
    archive.store(instance)
    answer = archive.get("/dicom-web/changefeed", offset=start, limit=5)
    assert answer.status_code == 200, answer.text
    entries = answer.json()
    assert [(e["Sequence"], e["Action"], e["State"]) for e in entries] == [
        (start + 1, "Create", "current"), (start + 2, "Update", "current")]
    created = entries[0]
    assert (created["StudyInstanceUid"], created["SeriesInstanceUid"],
            created["SopInstanceUid"]) == (study, str(instance.SeriesInstanceUID),
                                           str(instance.SOPInstanceUID))
    assert created["Timestamp"].endswith("Z")
    assert created["Metadata"]["0020000D"]["Value"] == [study]  # DICOM JSON, PS3.18 F.2
    assert "Metadata" not in entries[1]  # a study's change names no instance
    plain = archive.get("/dicom-web/changefeed", offset=start, limit=1,
                        includeMetadata="false").json()
    assert len(plain) == 1 and "Metadata" not in plain[0]

    latest = archive.get("/dicom-web/changefeed/latest")
    assert latest.status_code == 200
    assert latest.json()["Sequence"] == start + 2
    # after a rejection the instance is not visible: its entry keeps no metadata
    assert archive.post(f"/api/studies/{study}/reject",
                        json={"reason": "test"}).status_code == 200
    again = archive.get("/dicom-web/changefeed", offset=start, limit=1).json()
    assert again[0]["State"] == "current" and "Metadata" not in again[0]
    last = archive.get("/dicom-web/changefeed/latest", includemetadata="false").json()
    assert (last["Action"], last["StudyInstanceUid"]) == ("Update", study)


@pytest.mark.parametrize(("path", "params"), [
    ("/api/changes", {"since": "-1"}),
    ("/api/changes", {"since": "seven"}),
    ("/api/changes", {"limit": "0"}),
    ("/api/changes", {"since": str(2**70)}),
    ("/dicom-web/changefeed", {"offset": "-5"}),
    ("/dicom-web/changefeed", {"limit": "many"}),
    ("/dicom-web/changefeed", {"includeMetadata": "perhaps"}),
])
def test_bad_parameters_answer_400_with_a_message(archive: Archive, path: str,
                                                  params: dict[str, str]) -> None:
    answer = archive.get(path, **params)
    assert answer.status_code == 400
    name = next(iter(params))
    assert name in answer.json()["error"]


def test_a_large_limit_is_capped(archive: Archive) -> None:
    answer = archive.get("/api/changes", limit=10**9)
    assert answer.status_code == 200
    assert len(answer.json()["changes"]) <= 1000
    assert archive.get("/dicom-web/changefeed", limit=10**6).status_code == 200


def test_old_changes_are_pruned_and_numbering_goes_on(
        module_database_url: str, tmp_path: Path) -> None:
    """With a retention of about a second, the background pass drops the older changes; the
    newest stays, and the next change takes the next number."""
    url = module_database_url
    if url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    server = PacsServer(data_dir=tmp_path / "data", database_url=url,
                        start_env={"PACS_CHANGE_RETENTION_DAYS": "0.00002"}).start()
    try:
        with httpx.Client(timeout=60) as http:
            archive = Archive(server, tmp_path, http)
            study = make_uid("cf", "prune")
            archive.store(*(ct_instance(PatientID="CF-PR", StudyInstanceUID=study,
                                        InstanceNumber=n) for n in (1, 2)))
            top = _last(archive)
            assert top >= 3

            def pruned() -> list[dict[str, Any]] | None:
                kept = archive.poll_all(0, limit=100)
                return kept if [c["seq"] for c in kept] == [top] else None

            until("the changes but the newest pruned", pruned)
            archive.store(ct_instance(PatientID="CF-PR", StudyInstanceUID=study,
                                      InstanceNumber=3))
            assert [c["seq"] for c in archive.poll_all(top, limit=10)] == [top + 1]
    finally:
        server.stop()


def test_the_feed_needs_the_qa_role(module_database_url: str, tmp_path: Path) -> None:
    """A viewer sees archived studies only; the feed names studies in every state, so it
    needs the qa role (on both paths)."""
    url = module_database_url
    if url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    server = PacsServer(data_dir=tmp_path / "data", database_url=url,
                        extra_args=["--auth", "required"]).start()
    try:
        viewer = token(server, "cf-viewer", "viewer")
        qa = token(server, "cf-qa", "qa")
        for path in ("/api/changes", "/dicom-web/changefeed"):
            assert httpx.get(f"{server.base_url}{path}", timeout=30).status_code == 401
            assert httpx.get(f"{server.base_url}{path}", headers=bearer(viewer),
                             timeout=30).status_code == 403
            assert httpx.get(f"{server.base_url}{path}", headers=bearer(qa),
                             timeout=30).status_code == 200
    finally:
        server.stop()
