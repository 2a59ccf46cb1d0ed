"""The QA gate end to end with real peers: storescu pushes, findscu / getscu / QIDO / WADO read,
the review API quarantines, corrects, accepts, rejects and purges, with an audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.support import dcmtk
from tests.support.server import PacsServer
from tests.support.wait import until


@dataclass
class Archive:
    server: PacsServer
    workdir: Path
    http: httpx.Client

    def store(self, *datasets: Dataset) -> list[Path]:
        return dcmtk.store_datasets(self.server.dimse_port, datasets, workdir=self.workdir)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, f"{self.server.base_url}/api{path}", **kwargs)

    def state(self, study: str) -> str:
        response = self.api("GET", f"/studies/{study}")
        assert response.status_code == 200, response.text
        return str(response.json()["state"])

    def find(self, study: str) -> list[Dataset]:
        result, responses = dcmtk.findscu(
            self.server.dimse_port,
            ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}", "PatientName"],
            workdir=self.workdir,
        )
        assert result.returncode == 0, dcmtk.status_lines(result)
        return responses

    def qido(self, study: str) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.server.base_url}/dicom-web/studies",
                                 params={"StudyInstanceUID": study})
        assert response.status_code == 200
        found: list[dict[str, Any]] = response.json()
        return found

    def get(self, study: str, name: str) -> list[Dataset]:
        output = self.workdir / f"get-{name}"
        result = dcmtk.getscu(self.server.dimse_port,
                              ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                              output=output)
        assert result.returncode == 0, dcmtk.status_lines(result)
        return [pydicom.dcmread(path) for path in sorted(output.iterdir())]

    def audit(self, study: str) -> list[dict[str, Any]]:
        response = self.api("GET", "/audit", params={"study": study})
        assert response.status_code == 200
        events: list[dict[str, Any]] = response.json()
        return events


def _name(qido_item: dict[str, Any]) -> str:
    return str(qido_item["00100010"]["Value"][0]["Alphabetic"])


@pytest.fixture(scope="module")
def archive(module_database_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("qa")
    server = PacsServer(data_dir=root / "data", database_url=module_database_url,
                        extra_args=["--stable-seconds", "3600"]).start()
    try:
        with httpx.Client(timeout=60) as http:
            yield Archive(server, root, http)
    finally:
        server.stop()


def test_auto_mode_makes_a_clean_study_visible_at_once(archive: Archive) -> None:
    study = make_uid("qa", "auto")
    archive.store(*(ct_instance(PatientID="QA-AUTO", PatientName="Auto^Clean",
                                StudyInstanceUID=study, InstanceNumber=n) for n in (1, 2)))
    # no waiting: visible as soon as the C-STORE succeeded
    assert [str(r.PatientName) for r in archive.find(study)] == ["Auto^Clean"]
    assert [_name(item) for item in archive.qido(study)] == ["Auto^Clean"]
    assert archive.state(study) == "archived"
    stores = [e for e in archive.audit(study) if e["action"] == "store"]
    assert len(stores) == 2
    assert all(e["outcome"] == "stored" and e["actor"].startswith("dimse:STORESCU@127.0.0.1")
               for e in stores)


def test_patient_mismatch_is_quarantined_corrected_and_accepted(archive: Archive) -> None:
    first = make_uid("qa", "mismatch", "archived")
    second = make_uid("qa", "mismatch", "new")
    archive.store(ct_instance(PatientID="QA-P1", PatientName="Doe^Jane", StudyInstanceUID=first,
                              PatientBirthDate="19800202"))
    assert archive.state(first) == "archived"
    archive.store(*(ct_instance(PatientID="QA-P1", PatientName="Smith^Wrong",
                                PatientBirthDate="19800202", StudyInstanceUID=second,
                                InstanceNumber=n) for n in (1, 2)))

    assert archive.state(second) == "quarantined"
    queue = archive.api("GET", "/qa").json()
    held = [item for item in queue if item["study_instance_uid"] == second]
    assert len(held) == 1
    # one finding: the second instance repeats what the first said
    assert [finding["code"] for finding in held[0]["findings"]] == ["patient-mismatch"]
    assert any("Smith^Wrong" in f["message"] for f in held[0]["findings"])
    # invisible to every read path
    assert archive.find(second) == []
    assert archive.qido(second) == []
    assert archive.http.get(
        f"{archive.server.base_url}/dicom-web/studies/{second}/metadata").status_code == 404
    assert archive.get(second, "quarantined") == []

    corrected = archive.api("PATCH", f"/studies/{second}", json={"PatientName": "Doe^Jane"})
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["state"] == "quarantined"  # waits for the reviewer
    assert corrected.json()["findings"] == []  # re-checked clean
    accepted = archive.api("POST", f"/studies/{second}/accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "archived"

    assert [str(r.PatientName) for r in archive.find(second)] == ["Doe^Jane"]
    assert [_name(item) for item in archive.qido(second)] == ["Doe^Jane"]
    retrieved = archive.get(second, "corrected")
    assert len(retrieved) == 2
    assert {str(ds.PatientName) for ds in retrieved} == {"Doe^Jane"}
    wado = archive.http.get(
        f"{archive.server.base_url}/dicom-web/studies/{second}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert wado.status_code == 200
    hows = {e["detail"].get("how") for e in archive.audit(second) if e["action"] == "retrieve"}
    assert {"C-GET", "WADO-RS"} <= hows
    actions = [e["action"] for e in archive.audit(second)]
    for action in ("store", "quarantine", "correct", "accept", "retrieve"):
        assert action in actions, actions
    correction = next(e for e in archive.audit(second) if e["action"] == "correct")
    assert correction["detail"]["changes"]["PatientName"] == {"old": "Smith^Wrong",
                                                              "new": "Doe^Jane"}
    assert correction["detail"]["files_rewritten"] == 2


def test_same_study_with_other_patient_attributes_is_quarantined(archive: Archive) -> None:
    study = make_uid("qa", "study-mismatch")
    archive.store(ct_instance(PatientID="QA-S1", PatientName="First^Patient",
                              StudyInstanceUID=study, InstanceNumber=1))
    assert archive.state(study) == "archived"
    archive.store(ct_instance(PatientID="QA-S2", PatientName="Other^Patient",
                              StudyInstanceUID=study, InstanceNumber=2))
    assert archive.state(study) == "quarantined"
    codes = {f["code"] for f in archive.api("GET", f"/studies/{study}").json()["findings"]}
    assert codes == {"study-patient-mismatch"}
    assert archive.find(study) == []


def test_missing_attributes_are_a_finding(archive: Archive) -> None:
    study = make_uid("qa", "missing")
    ds = ct_instance(PatientID="QA-M1", PatientName="", StudyInstanceUID=study)
    del ds.StudyDate
    archive.store(ds)
    review = archive.api("GET", f"/studies/{study}").json()
    assert review["state"] == "quarantined"
    messages = " ".join(f["message"] for f in review["findings"])
    assert "PatientName" in messages and "StudyDate" in messages


def test_a_rejected_study_stays_rejected_and_invisible(archive: Archive) -> None:
    study = make_uid("qa", "rejected")
    archive.store(ct_instance(PatientID="QA-R1", PatientName="Test^Shot",
                              StudyInstanceUID=study, InstanceNumber=1))
    rejected = archive.api("POST", f"/studies/{study}/reject", json={"reason": "test shot"})
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["state"] == "rejected"
    assert rejected.json()["rejection_reason"] == "test shot"
    assert archive.find(study) == [] and archive.qido(study) == []

    archive.store(ct_instance(PatientID="QA-R1", PatientName="Test^Shot",
                              StudyInstanceUID=study, InstanceNumber=2))  # answered success
    assert archive.state(study) == "rejected"
    assert archive.find(study) == [] and archive.qido(study) == []
    stores = [e for e in archive.audit(study) if e["action"] == "store"]
    assert any("stays rejected" in e["outcome"] for e in stores)


def test_illegal_transitions_and_unknown_uids_change_nothing(archive: Archive) -> None:
    study = make_uid("qa", "illegal")
    archive.store(ct_instance(PatientID="QA-I1", PatientName="Legal^Only",
                              StudyInstanceUID=study))
    again = archive.api("POST", f"/studies/{study}/accept")
    assert again.status_code == 409
    assert again.json()["state"] == "archived" and "error" in again.json()
    assert archive.api("POST", f"/studies/{study}/reject", json={"reason": "  "}
                       ).status_code == 400
    assert archive.api("POST", f"/studies/{study}/reject", json={}).status_code == 400
    bad_patch = archive.api("PATCH", f"/studies/{study}", json={"Modality": "MR"})
    assert bad_patch.status_code == 400
    bad_date = archive.api("PATCH", f"/studies/{study}", json={"PatientBirthDate": "1980"})
    assert bad_date.status_code == 400 and "YYYYMMDD" in bad_date.json()["error"]
    assert archive.state(study) == "archived"
    assert [_name(i) for i in archive.qido(study)] == ["Legal^Only"]

    archive.api("POST", f"/studies/{study}/reject", json={"reason": "wrong patient"})
    for action in ("accept", "reject"):
        late = archive.api("POST", f"/studies/{study}/{action}", json={"reason": "again"})
        assert late.status_code == 409 and late.json()["state"] == "rejected"
    unknown = make_uid("qa", "nobody")
    for method, path, body in (("GET", "", None), ("POST", "/accept", None),
                               ("POST", "/reject", {"reason": "x"}),
                               ("PATCH", "", {"PatientName": "X^Y"})):
        answer = archive.api(method, f"/studies/{unknown}{path}", json=body)
        assert answer.status_code == 404, (method, path, answer.text)
        assert "error" in answer.json()


def test_purge_deletes_rejected_studies_and_their_files(archive: Archive) -> None:
    study = make_uid("qa", "purge")
    archive.store(ct_instance(PatientID="QA-PURGE", PatientName="Purge^Me",
                              StudyInstanceUID=study))
    objects = archive.server.data_dir / "objects"
    before = sum(1 for p in objects.rglob("*") if p.is_file())
    archive.api("POST", f"/studies/{study}/reject", json={"reason": "duplicate"})
    result = archive.server.cli("purge", "--retention-days", "0")
    assert result.returncode == 0, result.stderr
    assert f"purged: {study}" in result.stdout
    assert archive.api("GET", f"/studies/{study}").status_code == 404
    after = sum(1 for p in objects.rglob("*") if p.is_file())
    assert after <= before - 1
    deleted = [e for e in archive.audit(study) if e["action"] == "delete"]
    assert len(deleted) == 1 and deleted[0]["outcome"] == "purged"


def test_pacs_audit_prints_the_trail(archive: Archive) -> None:
    study = make_uid("qa", "auto")
    result = archive.server.cli("audit", "--study", study)
    assert result.returncode == 0, result.stderr
    assert "store" in result.stdout and study in result.stdout


@pytest.fixture
def manual_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--qa", "manual"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_manual_mode_holds_every_new_study(manual_server: PacsServer, tmp_path: Path) -> None:
    with httpx.Client(timeout=60) as http:
        archive = Archive(manual_server, tmp_path, http)
        study = make_uid("qa", "manual")
        archive.store(ct_instance(PatientID="QA-MAN", PatientName="Held^Back",
                                  StudyInstanceUID=study))
        assert archive.state(study) == "quarantined"
        assert archive.find(study) == [] and archive.qido(study) == []
        queue = archive.api("GET", "/qa").json()
        assert [f["code"] for f in queue[0]["findings"]] == ["manual-review"]
        assert archive.api("POST", f"/studies/{study}/accept").status_code == 200
        assert [_name(i) for i in archive.qido(study)] == ["Held^Back"]


def test_a_viewer_rejects_a_series_and_then_the_study_by_iocm_code(archive: Archive) -> None:
    study = make_uid("qa", "series-reject")
    keep, drop = make_uid("qa", "series-keep"), make_uid("qa", "series-drop")
    archive.store(
        ct_instance(PatientID="QA-SR", PatientName="Series^Reject", StudyInstanceUID=study,
                    SeriesInstanceUID=drop, SeriesNumber=1, InstanceNumber=1),
        ct_instance(PatientID="QA-SR", PatientName="Series^Reject", StudyInstanceUID=study,
                    SeriesInstanceUID=keep, SeriesNumber=2, InstanceNumber=1),
    )
    web = f"{archive.server.base_url}/dicom-web/studies/{study}"
    answer = archive.http.post(f"{web}/series/{drop}/reject/113001%5EDCM")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "archived"
    series = archive.http.get(f"{web}/series").json()
    assert [s["0020000E"]["Value"][0] for s in series] == [keep]
    assert archive.qido(study)[0]["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
    assert archive.http.get(f"{web}/series/{drop}/metadata").status_code == 404
    assert {str(ds.SeriesInstanceUID) for ds in archive.get(study, "series-left")} == {keep}

    assert archive.http.post(f"{web}/series/{keep}/reject/999^XYZ").status_code == 400
    assert archive.http.post(f"{web}/series/{make_uid('nope')}/reject/113001%5EDCM"
                             ).status_code == 404
    last = archive.http.post(f"{web}/series/{keep}/reject/113037%5EDCM")
    assert last.status_code == 200 and last.json()["state"] == "rejected"
    assert archive.qido(study) == []
    assert "Patient Safety" in archive.api("GET", f"/studies/{study}").json()["rejection_reason"]
    actions = [e["action"] for e in archive.audit(study)]
    assert actions.count("reject-series") == 2 and "reject" in actions


def test_correcting_one_study_of_a_shared_patient_never_renames_the_others(
    archive: Archive,
) -> None:
    first, second = make_uid("qa", "shared", 1), make_uid("qa", "shared", 2)
    for study in (first, second):
        archive.store(ct_instance(PatientID="QA-SHARE", PatientName="Same^Name",
                                  StudyInstanceUID=study))
    answer = archive.api("PATCH", f"/studies/{second}", json={"PatientName": "Other^Name"})
    assert answer.status_code == 200, answer.text
    # same PatientID, another name: held for review, and the other study is untouched
    assert answer.json()["state"] == "quarantined"
    assert [f["code"] for f in answer.json()["findings"]] == ["patient-mismatch"]
    assert [_name(item) for item in archive.qido(first)] == ["Same^Name"]


def _undecodable_rle(**attributes: Any) -> Dataset:
    """An RLE instance whose header is sound but whose one frame cannot be decoded (cut short
    after its RLE header: the segments it points at are not there)."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    from tests.factories.datasets import encode

    ds = encode(ct_instance(**attributes), RLELossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([bytes(frame[:70])])
    return ds


@pytest.fixture
def settling_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--stable-seconds", "0.5"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_stable_study_gets_the_pixel_data_check(
    settling_server: PacsServer, tmp_path: Path
) -> None:
    with httpx.Client(timeout=60) as http:
        archive = Archive(settling_server, tmp_path, http)
        good, bad = make_uid("qa", "pixels-good"), make_uid("qa", "pixels-bad")
        archive.store(ct_instance(PatientID="QA-PIX1", PatientName="Good^Pixels",
                                  StudyInstanceUID=good),
                      _undecodable_rle(PatientID="QA-PIX2", PatientName="Bad^Pixels",
                                       StudyInstanceUID=bad))
        assert archive.state(bad) == "archived"  # the instance checks passed at arrival

        until("both studies are stable", lambda: all(
            archive.api("GET", f"/studies/{uid}").json()["stable"] for uid in (good, bad)))
        assert archive.api("GET", f"/studies/{good}").json()["state"] == "archived"
        held = archive.api("GET", f"/studies/{bad}").json()
        assert held["stable"] and held["state"] == "quarantined"
        assert [f["code"] for f in held["findings"]] == ["pixel-data-undecodable"]
        assert archive.qido(bad) == [] and len(archive.qido(good)) == 1
        assert "stable" in [e["action"] for e in archive.audit(bad)]


def test_merge_files_a_study_under_another_patient(archive: Archive) -> None:
    target, stray = make_uid("qa", "merge", "target"), make_uid("qa", "merge", "stray")
    archive.store(ct_instance(PatientID="QA-MERGE-A", PatientName="Target^Patient",
                              PatientBirthDate="19610101", PatientSex="F",
                              StudyInstanceUID=target))
    archive.store(ct_instance(PatientID="QA-TEMP-9", PatientName="Unknown^Trauma",
                              PatientBirthDate="19000101", PatientSex="O",
                              StudyInstanceUID=stray))
    merged = archive.api("POST", f"/studies/{stray}/merge", json={"PatientID": "QA-MERGE-A"})
    assert merged.status_code == 200, merged.text
    assert merged.json()["state"] == "archived" and merged.json()["findings"] == []
    assert merged.json()["patient_id"] == "QA-MERGE-A"
    found = archive.qido(stray)
    assert [_name(i) for i in found] == ["Target^Patient"]
    assert found[0]["00100020"]["Value"] == ["QA-MERGE-A"]
    (retrieved,) = archive.get(stray, "merged")
    assert (retrieved.PatientID, str(retrieved.PatientName), retrieved.PatientBirthDate,
            retrieved.PatientSex) == ("QA-MERGE-A", "Target^Patient", "19610101", "F")
    assert archive.api("POST", f"/studies/{stray}/merge",
                       json={"PatientID": "NOBODY-HERE"}).status_code == 404


@pytest.fixture
def modality_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--modality", "CT1"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_calling_ae_that_is_not_a_known_modality_is_a_finding(
    modality_server: PacsServer, tmp_path: Path
) -> None:
    with httpx.Client(timeout=60) as http:
        archive = Archive(modality_server, tmp_path, http)
        known, unknown = make_uid("qa", "ae", "known"), make_uid("qa", "ae", "unknown")
        files = [write_part10(ct_instance(PatientID="QA-AE1", PatientName="Known^Ae",
                                          StudyInstanceUID=known), tmp_path / "known.dcm")]
        result = dcmtk.storescu(modality_server.dimse_port, files, workdir=tmp_path, aet="CT1")
        assert dcmtk.successes(result) == 1, dcmtk.status_lines(result)
        archive.store(ct_instance(PatientID="QA-AE2", PatientName="Unknown^Ae",
                                  StudyInstanceUID=unknown))  # calling AE STORESCU
        assert archive.state(known) == "archived"
        held = archive.api("GET", f"/studies/{unknown}").json()
        assert held["state"] == "quarantined"
        assert [f["code"] for f in held["findings"]] == ["unknown-modality"]
        assert "STORESCU" in held["findings"][0]["message"]


def test_an_ae_registered_to_store_is_a_known_modality(
    modality_server: PacsServer, tmp_path: Path
) -> None:
    """``pacs ae add MR1 --allow store`` makes MR1 a known modality for the QA check, beside
    the ``--modality`` list, without a restart; an AE registered without store is not."""
    added = modality_server.cli("ae", "add", "MR1", "--host", "127.0.0.1", "--allow", "store")
    assert added.returncode == 0, added.stderr
    added = modality_server.cli("ae", "add", "WS1", "--host", "127.0.0.1", "--allow", "find")
    assert added.returncode == 0, added.stderr
    with httpx.Client(timeout=60) as http:
        archive = Archive(modality_server, tmp_path, http)
        attempts = iter(range(1000))

        def store(ae: str) -> str:
            study = make_uid("qa", "registered", ae, str(next(attempts)))
            path = write_part10(ct_instance(PatientID=f"QA-{ae}", StudyInstanceUID=study),
                                tmp_path / f"{study}.dcm")
            result = dcmtk.storescu(modality_server.dimse_port, [path], workdir=tmp_path,
                                    aet=ae)
            assert dcmtk.successes(result) == 1, dcmtk.status_lines(result)
            return study

        # each server process reads the registry at most every 2 s: the CLI's entries reach
        # it within that, so MR1's studies are archived from then on
        until("MR1 counts as a known modality",
              lambda: archive.state(store("MR1")) == "archived")
        held = archive.api("GET", f"/studies/{store('WS1')}").json()
        assert held["state"] == "quarantined"
        assert [f["code"] for f in held["findings"]] == ["unknown-modality"]
