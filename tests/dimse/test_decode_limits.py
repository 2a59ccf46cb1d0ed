"""Decoding is bounded on DIMSE too (issue 12, item 6), against a real ``pacs serve`` with
``PACS_MAX_DECODED_MB=64`` and DCMTK: a deflated data set that inflates beyond the limit is
refused at C-STORE with 0xC000 and a comment, and the server goes on storing; a C-GET or C-MOVE
that must decode an image over the limit for its destination fails that sub-operation only
(0xB000, the instance in the Failed SOP Instance UID List) and sends the rest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.factories.huge import constant_rle_instance, deflate_bomb_instance
from tests.support import dcmtk
from tests.support.server import PacsServer

LIMIT_MB = 64
STUDY = make_uid("decode-limits", "study")


@dataclass
class Archive:
    server: PacsServer
    plain: dcmtk.Storescp  # a C-MOVE destination that accepts uncompressed syntaxes only
    workdir: Path
    huge: Dataset  # RLE, 9000 x 9000: 81 MB decoded
    normal: Dataset


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("dimse-decode")
    plain = dcmtk.Storescp(root / "plain", ae_title="PLAIN", accept_all=False).start()
    server = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
        extra_args=["--peer", plain.peer], start_env={"PACS_MAX_DECODED_MB": str(LIMIT_MB)},
    )
    server.start()
    try:
        study = {"PatientID": "DL-DIMSE", "PatientName": "LIMIT^DECODE", "StudyDate": "20240101",
                 "AccessionNumber": "DL-1", "StudyInstanceUID": STUDY}
        huge = constant_rle_instance(9000, 9000, SeriesNumber=1, **study)
        normal = ct_instance(SeriesNumber=2, **study)
        dcmtk.store_datasets(server.dimse_port, [huge, normal], workdir=root)
        yield Archive(server, plain, root, huge, normal)
    finally:
        server.stop()
        plain.stop()


def _final(text: str, marker: str) -> str:
    assert marker in text, text[-3000:]
    return text.split(marker)[-1]


def test_c_store_of_a_deflated_data_set_that_inflates_beyond_the_limit(
    archive: Archive,
) -> None:
    bomb = write_part10(deflate_bomb_instance((LIMIT_MB + 32) << 20, PatientID="DL-BOMB"),
                        archive.workdir / "bomb" / "bomb.dcm")
    assert bomb.stat().st_size < 1 << 20
    good = write_part10(ct_instance(PatientID="DL-AFTER"), archive.workdir / "bomb" / "good.dcm")
    config = dcmtk.storescu_config([bomb, good], archive.workdir / "bomb.cfg")  # proposes deflated
    result = dcmtk.run("storescu", "-v", "-nh", "-aec", "PACS", "-xf", str(config), "Default",
                       "127.0.0.1", str(archive.server.dimse_port), str(bomb), str(good))
    text = dcmtk.status_lines(result)
    assert "Received Store Response (Error: CannotUnderstand)" in text, text
    assert dcmtk.successes(result) == 1, text  # the association went on: the next one stored
    assert f"inflates beyond the limit of {LIMIT_MB} MB" in archive.server.log()
    for patient, expected in (("DL-BOMB", 0), ("DL-AFTER", 1)):
        _, studies = dcmtk.findscu(
            archive.server.dimse_port,
            ["QueryRetrieveLevel=STUDY", f"PatientID={patient}", "StudyInstanceUID"],
            workdir=archive.workdir,
        )
        assert len(studies) == expected, patient


def test_c_get_that_must_decode_an_image_over_the_limit_fails_that_one(
    archive: Archive,
) -> None:
    """pynetdicom as the C-GET SCU (DCMTK's getscu does not read the final response's data
    set): it accepts both SOP classes in Explicit VR Little Endian only, so the RLE image
    would have to be decoded."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in (SecondaryCaptureImageStorage, CTImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        roles.append(build_role(sop_class, scp_role=True))
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = ae.associate("127.0.0.1", archive.server.dimse_port, ae_title="PACS",
                         ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = STUDY
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    status, identifier = responses[-1]
    assert int(status.Status) == 0xB000
    assert (int(status.NumberOfCompletedSuboperations),
            int(status.NumberOfFailedSuboperations)) == (1, 1)
    assert identifier is not None
    assert identifier["FailedSOPInstanceUIDList"].VM == 1
    assert identifier.FailedSOPInstanceUIDList == archive.huge.SOPInstanceUID
    assert received == [archive.normal.SOPInstanceUID]
    assert "above the limit of 64 MB" in archive.server.log()


def test_c_move_that_must_decode_an_image_over_the_limit_fails_that_one(
    archive: Archive,
) -> None:
    archive.plain.clear()
    result = dcmtk.movescu(archive.server.dimse_port,
                           ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"],
                           destination="PLAIN", extra=("-d",))
    final = _final(dcmtk.status_lines(result), "Received Final Move Response")
    assert "0xb000" in final.lower(), final
    assert archive.huge.SOPInstanceUID in final, final
    received = [str(pydicom.dcmread(p).SOPInstanceUID) for p in archive.plain.files()]
    assert received == [archive.normal.SOPInstanceUID]
    assert dcmtk.echoscu(archive.server.dimse_port).returncode == 0  # still serving
