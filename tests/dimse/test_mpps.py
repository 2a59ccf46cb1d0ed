"""The MPPS SCP (PS3.4 F.7) of a real ``pacs serve``, driven by a pynetdicom MPPS SCU, on
SQLite and PostgreSQL, over the transport ``PACS_DIMSE_TRANSPORT`` names (fast or stock).

N-CREATE IN PROGRESS links the scheduled step (its status becomes STARTED), N-SET COMPLETED or
DISCONTINUED is final (the step follows; a later N-SET is refused 0x0110 with Error ID A710,
F.7.2.2.4), references are recorded and the index answers which studies are whole (every
referenced instance stored by storescu) and which instances are missing.

DCMTK is not used here: Debian's ``dcmtk`` package ships no MPPS SCU (``dpkg -L dcmtk``
lists no N-CREATE / N-SET tool; its ``wlmscpfs`` is the worklist SCP).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt

from tests.factories.datasets import ct_instance, make_uid
from tests.factories.orders import scheduled_step, step_status
from tests.support import dcmtk
from tests.support.nscu import MPPS, association, mpps_final, mpps_in_progress
from tests.support.server import PacsServer


@dataclass
class Site:
    server: PacsServer
    root: Path

    @property
    def port(self) -> int:
        return self.server.dimse_port

    def api(self, path: str) -> Any:
        answer = httpx.get(f"{self.server.base_url}/api{path}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def site(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("mpps")
    server = PacsServer(data_dir=root / "data", database_url=module_database_url).start()
    try:
        yield Site(server, root)
    finally:
        server.stop()


def _create(port: int, ds: Dataset, uid: str | None, ae_title: str = "CT1"
            ) -> tuple[int, Dataset, str | None]:
    """N-CREATE: (status, status data set, the Affected SOP Instance UID of the response)."""
    answered: list[str | None] = []

    def received(event: Any) -> None:
        command = event.message.command_set
        if int(command.CommandField) == 0x8140:  # N-CREATE-RSP
            answered.append(command.get("AffectedSOPInstanceUID"))

    with association(port, ae_title, MPPS,
                     handlers=[(evt.EVT_DIMSE_RECV, received)]) as assoc:
        status, _ = assoc.send_n_create(ds, MPPS, uid)
    return int(status.Status), status, (str(answered[0]) if answered and answered[0] else None)


def _set(port: int, uid: str, ds: Dataset) -> Dataset:
    with association(port, "CT1", MPPS) as assoc:
        status, _ = assoc.send_n_set(ds, MPPS, uid)
    return status


def _audit(site: Site, uid: str) -> list[tuple[str, str]]:
    events = site.api(f"/audit?study={uid}")
    return sorted((event["action"], event["outcome"]) for event in events
                  if event["action"].startswith("mpps"))


def test_completed_mpps_links_its_step_and_tells_when_its_study_is_whole(site: Site) -> None:
    study = make_uid("mpps", "study", 1)
    series = make_uid("mpps", "series", 1)
    images = [ct_instance(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=n,
                          PatientID="P1", AccessionNumber="ACC1") for n in range(1, 4)]
    with site.server.services() as services:
        step = scheduled_step(services.index, study_instance_uid=study,
                              accession_number="ACC1")
    uid = make_uid("mpps", "pps", 1)

    status, _, returned = _create(site.port, mpps_in_progress(study_instance_uid=study), uid)
    assert status == 0x0000
    assert returned == uid
    with site.server.services() as services:
        assert step_status(services.index, step) == "STARTED"
    (shown,) = site.api(f"/studies/{study}/mpps")
    assert shown["status"] == "IN PROGRESS" and shown["scheduled_step_id"] == "SPS1"
    assert shown["started"] == "20260101101500" and shown["calling_ae"] == "CT1"

    ended = _set(site.port, uid, mpps_final(
        "COMPLETED", {series: [str(ds.SOPInstanceUID) for ds in images]}))
    assert int(ended.Status) == 0x0000
    with site.server.services() as services:
        assert step_status(services.index, step) == "COMPLETED"
        assert services.mpps.missing_instances(study) == sorted(
            str(ds.SOPInstanceUID) for ds in images)
        assert study not in services.mpps.ready_studies()

    dcmtk.store_datasets(site.port, images[:2], workdir=site.root / "first")
    with site.server.services() as services:
        assert services.mpps.missing_instances(study) == [str(images[2].SOPInstanceUID)]
        assert study not in services.mpps.ready_studies()
    dcmtk.store_datasets(site.port, images[2:], workdir=site.root / "last")
    with site.server.services() as services:
        assert services.mpps.missing_instances(study) == []
        assert study in services.mpps.ready_studies()

    (shown,) = site.api(f"/studies/{study}/mpps")
    assert (shown["status"], shown["referenced_instances"], shown["stored_instances"]) == (
        "COMPLETED", 3, 3)
    assert shown["ended"] == "20260101103000"
    assert _audit(site, study) == [("mpps-create", "IN PROGRESS"), ("mpps-set", "COMPLETED")]


def test_the_study_comes_from_the_order_when_the_modality_names_only_the_accession(
        site: Site) -> None:
    study = make_uid("mpps", "study", 2)
    with site.server.services() as services:
        step = scheduled_step(services.index, study_instance_uid=study,
                              accession_number="ACC2", step_id="SPS7")
    status, _, made = _create(site.port, mpps_in_progress(
        study_instance_uid=None, accession_number="ACC2", step_id="SPS7"), None)
    assert status == 0x0000
    assert made is not None and made.startswith("1.2.")  # made by the SCP, PS3.7 10.1.5.1.4
    (shown,) = site.api(f"/studies/{study}/mpps")
    assert shown["sop_instance_uid"] == made
    with site.server.services() as services:
        assert step_status(services.index, step) == "STARTED"


def test_discontinued_is_final_and_a_later_n_set_is_refused(site: Site) -> None:
    study = make_uid("mpps", "study", 3)
    with site.server.services() as services:
        step = scheduled_step(services.index, study_instance_uid=study,
                              accession_number="ACC3")
    uid = make_uid("mpps", "pps", 3)
    assert _create(site.port, mpps_in_progress(study_instance_uid=study), uid)[0] == 0
    stopped = _set(site.port, uid, mpps_final("DISCONTINUED", {}))
    assert int(stopped.Status) == 0x0000
    with site.server.services() as services:
        assert step_status(services.index, step) == "DISCONTINUED"
        assert study not in services.mpps.ready_studies()  # nothing completed

    again = _set(site.port, uid, mpps_final("COMPLETED", {}))
    assert int(again.Status) == 0x0110  # Processing failure (PS3.4 F.7.2.2.4)
    assert again.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert again.ErrorID == 0xA710
    assert site.api(f"/studies/{study}/mpps")[0]["status"] == "DISCONTINUED"


def test_refusals_name_the_problem(site: Site) -> None:
    study = make_uid("mpps", "study", 4)
    uid = make_uid("mpps", "pps", 4)
    assert _create(site.port, mpps_in_progress(study_instance_uid=study), uid)[0] == 0

    status, answer, _ = _create(site.port, mpps_in_progress(study_instance_uid=study), uid)
    assert status == 0x0111  # Duplicate SOP Instance
    assert answer.ErrorComment == "an MPPS with this SOP Instance UID exists already"

    status, answer, _ = _create(site.port, mpps_in_progress(
        study_instance_uid=study, status="COMPLETED"), make_uid("mpps", "pps", 5))
    assert status == 0x0106  # Invalid attribute value: an N-CREATE is IN PROGRESS (F.7.2.1)
    assert "IN PROGRESS" in answer.ErrorComment

    no_status = mpps_in_progress(study_instance_uid=study)
    del no_status.PerformedProcedureStepStatus
    status, answer, _ = _create(site.port, no_status, make_uid("mpps", "pps", 6))
    assert status == 0x0120  # Missing attribute

    unknown = _set(site.port, make_uid("mpps", "pps", 7), mpps_final("COMPLETED", {}))
    assert int(unknown.Status) == 0x0112  # No such SOP Instance
    bad = _set(site.port, uid, mpps_final("FINISHED", {}))
    assert int(bad.Status) == 0x0106
    assert [m["sop_instance_uid"] for m in site.api(f"/studies/{study}/mpps")] == [uid]
    events = site.api(f"/audit?study={study}")
    assert [(e["action"], e["detail"]["sop_instance_uid"]) for e in events] == [
        ("mpps-create", uid)]
