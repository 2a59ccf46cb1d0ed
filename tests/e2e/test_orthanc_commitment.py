"""Orthanc's Storage Commitment SCU against pacs (PS3.4 J.3), end to end.

Orthanc (Debian's 1.10, started by ``bench.orthanc`` on free loopback ports with its DICOM
listener on) knows pacs as a modality; pacs knows Orthanc in its AE registry, with Orthanc's
DICOM port. Instances are in both; Orthanc is asked (``POST /modalities/pacs/storage-
commitment``, its REST API) whether pacs committed some stored ones and one it never got.
Orthanc releases its association after the N-ACTION-RSP and waits for the N-EVENT-REPORT on
its own listener, so pacs reports on a new association to the registered address; Orthanc's
``GET /storage-commitment/{transaction}`` then shows the outcome of every instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.orthanc import Orthanc
from tests.factories.datasets import ct_instance, make_uid, to_part10_bytes
from tests.support import dcmtk
from tests.support.orthanc import binaries, upload
from tests.support.server import PacsServer
from tests.support.wait import until

STUDY = make_uid("orthanc-commit", "study")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    binary, _plugin = binaries()
    server = Orthanc(binary, tmp_path / "orthanc", aet="ORTHANC", env={"TCP_NODELAY": "1"})
    server.extra_config = {"Name": "pacs-commitment-test", "DicomServerEnabled": True,
                           "DicomModalities": {}}
    try:
        yield server
    finally:
        server.stop()


def _start_orthanc(orthanc: Orthanc, pacs_port: int) -> None:
    """Orthanc knowing pacs (AE PACS on 127.0.0.1) as the modality ``pacs``."""
    orthanc.extra_config["DicomModalities"] = {"pacs": ["PACS", "127.0.0.1", pacs_port]}
    try:
        orthanc.start()
    except RuntimeError as error:
        raise RuntimeError(f"{error}\n{orthanc.log_tail()}") from error


def test_orthanc_learns_which_instances_pacs_committed(
        tmp_path: Path, database_url: str, orthanc: Orthanc) -> None:
    images = [ct_instance(StudyInstanceUID=STUDY, InstanceNumber=n) for n in range(1, 4)]
    server = PacsServer(data_dir=tmp_path / "data", database_url=database_url).start()
    try:
        _start_orthanc(orthanc, server.dimse_port)
        added = server.cli("ae", "add", "ORTHANC", "--host", "127.0.0.1", "--port",
                           str(orthanc.dicom_port), "--allow", "store")
        assert added.returncode == 0, added.stderr
        dcmtk.store_datasets(server.dimse_port, images[:2], workdir=tmp_path)
        with httpx.Client(timeout=60) as http:
            for ds in images:
                upload(orthanc, http, to_part10_bytes(ds))
            asked = http.post(f"{orthanc.url}/modalities/pacs/storage-commitment", json={
                "DicomInstances": [{"SOPClassUID": CT_IMAGE,
                                    "SOPInstanceUID": str(ds.SOPInstanceUID)}
                                   for ds in images]})
            assert asked.status_code == 200, asked.text
            transaction = asked.json()["ID"]

            def outcome() -> dict[str, Any] | None:
                found = http.get(f"{orthanc.url}/storage-commitment/{transaction}")
                assert found.status_code == 200, found.text
                body: dict[str, Any] = found.json()
                return body if body["Status"] != "Pending" else None

            result = until("Orthanc's storage commitment answered", outcome)
        assert result["Status"] == "Failure"  # one of the three is not in pacs
        assert sorted(item["SOPInstanceUID"] for item in result["Success"]) == sorted(
            str(ds.SOPInstanceUID) for ds in images[:2])
        (failed,) = result["Failures"]
        assert failed["SOPInstanceUID"] == str(images[2].SOPInstanceUID)
        assert failed["FailureReason"] == 0x0112  # No such object instance
        with server.services() as services:
            (record,) = services.commitment.by_transaction(transaction)
        assert (record.calling_ae, record.state, record.reported_via) == (
            "ORTHANC", "reported", "new-association")
    finally:
        server.stop()
