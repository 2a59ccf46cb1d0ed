"""Orthanc's DICOMweb plugin pushes a study into a running ``pacs serve`` over STOW-RS.

A client nobody here wrote: Debian's ``orthanc`` and ``orthanc-dicomweb`` (``make orthanc``).
Orthanc sends ``multipart/related; boundary=<uuid>-<uuid>`` (73 characters, over RFC 2046's
70), which pacs refused with 400 until the reader took boundaries up to 1,000 characters.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.factories.corpus import generate
from tests.support import orthanc as orthanc_support
from tests.support.server import PacsServer

INSTANCES = 40


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[PacsServer]:
    server = PacsServer(data_dir=tmp_path / "data",
                        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}").start()
    try:
        yield server
    finally:
        server.stop()


def test_orthanc_stores_a_study_into_pacs_over_stow_rs(pacs: PacsServer, tmp_path: Path) -> None:
    generate(str(tmp_path / "corpus"), patients=1, studies=1, series=2,
             instances=INSTANCES // 2, seed=12, quiet=True)
    files = sorted((tmp_path / "corpus").rglob("*.dcm"))
    sent = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert len(sent) == INSTANCES

    with (orthanc_support.running(tmp_path / "orthanc",
                                  {"pacs": f"{pacs.base_url}/dicom-web/"}) as orthanc,
          httpx.Client(timeout=120) as http):
        studies = {orthanc_support.upload(orthanc, http, path.read_bytes())["ParentStudy"]
                   for path in files}
        assert len(studies) == 1

        pushed = http.post(f"{orthanc.url}/dicom-web/servers/pacs/stow",
                           json={"Resources": sorted(studies)})
        assert pushed.status_code == 200, f"{pushed.text}\n{orthanc.log_tail()}\n{pacs.log()}"

        answer = http.get(f"{pacs.base_url}/dicom-web/studies/{study_uid}/instances",
                          params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    stored = {item["00080018"]["Value"][0] for item in answer.json()}
    assert stored == sent
