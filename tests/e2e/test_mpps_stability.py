"""MPPS drives stability in a real ``pacs serve`` (SQLite and PostgreSQL): a COMPLETED MPPS
whose referenced instances have all arrived makes the study stable at once, long before the
stability period; one whose instances are still missing when the study becomes stable gets an
``incomplete`` finding listing them (and is quarantined for review)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.nscu import MPPS, association, mpps_final, mpps_in_progress
from tests.support.server import PacsServer
from tests.support.wait import until


def _study(server: PacsServer, uid: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.base_url}/api/studies/{uid}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _perform(server: PacsServer, study: str, series: str, sop_uids: list[str], n: int) -> None:
    """IN PROGRESS, then COMPLETED referencing ``sop_uids`` (a pynetdicom MPPS SCU)."""
    pps = make_uid("mpps-stability", "pps", n)
    with association(server.dimse_port, "CT1", MPPS) as assoc:
        status, _ = assoc.send_n_create(mpps_in_progress(study_instance_uid=study), MPPS, pps)
        assert int(status.Status) == 0x0000
        status, _ = assoc.send_n_set(mpps_final("COMPLETED", {series: sop_uids}), MPPS, pps)
        assert int(status.Status) == 0x0000


def _images(n: int, count: int) -> tuple[str, str, list[Any]]:
    study = make_uid("mpps-stability", "study", n)
    series = make_uid("mpps-stability", "series", n)
    return study, series, [ct_instance(StudyInstanceUID=study, SeriesInstanceUID=series,
                                       InstanceNumber=i, PatientID=f"MS{n}")
                           for i in range(1, count + 1)]


def test_a_completed_mpps_with_every_instance_here_makes_the_study_stable_at_once(
        tmp_path: Path, database_url: str) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=database_url,
                        extra_args=["--stable-seconds", "3600"]).start()
    try:
        study, series, images = _images(1, 3)
        dcmtk.store_datasets(server.dimse_port, images[:2], workdir=tmp_path / "a")
        _perform(server, study, series, [str(ds.SOPInstanceUID) for ds in images], 1)
        assert _study(server, study)["stable"] is False  # one referenced instance is missing

        dcmtk.store_datasets(server.dimse_port, images[2:], workdir=tmp_path / "b")
        stable = until("the study is stable", lambda: _study(server, study)["stable"])

        found = _study(server, study)
        assert stable and found["state"] == "archived" and found["findings"] == []
        assert ("stable", "archived") in [(e["action"], e["outcome"])
                                          for e in found["history"]]
    finally:
        server.stop()


def test_instances_missing_once_stable_are_an_incomplete_finding(
        tmp_path: Path, database_url: str) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=database_url,
                        extra_args=["--stable-seconds", "1"]).start()
    try:
        study, series, images = _images(2, 3)
        _perform(server, study, series, [str(ds.SOPInstanceUID) for ds in images], 2)
        dcmtk.store_datasets(server.dimse_port, images[:1], workdir=tmp_path / "a")

        until("the study is stable", lambda: _study(server, study)["stable"])
        found = _study(server, study)
        [finding] = [f for f in found["findings"] if f["code"] == "incomplete"]

        assert found["state"] == "quarantined"
        assert "2 instances that did not arrive" in finding["message"]
        for missing in images[1:]:
            assert str(missing.SOPInstanceUID) in finding["message"]
        assert str(images[0].SOPInstanceUID) not in finding["message"]
    finally:
        server.stop()
