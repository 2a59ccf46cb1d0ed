"""Bad C-STORE data gets a failure status with a comment, leaves nothing behind, and the
association goes on serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from storage.attributes import Level
from tests.factories import datasets as f
from tests.support.files import dataset_bytes
from tests.support.server import PacsServer


@pytest.fixture
def association(sqlite_server: PacsServer) -> Iterator[Association]:
    """A pynetdicom SCU that sends files as they are on disk (no decode, no re-encode)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", sqlite_server.dimse_port, ae_title="PACS")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _send(assoc: Association, path: Path) -> tuple[int, str]:
    status = assoc.send_c_store(path)
    return int(status.Status), str(status.get("ErrorComment", ""))


def _nothing_left(server: PacsServer, expected_instances: int) -> None:
    with server.services() as services:
        with services.index.unit_of_work() as repo:
            assert repo.counts()[Level.IMAGE] == expected_instances
        assert len(list(services.blobs.keys())) == expected_instances
        # nothing half-written; the empty files made ahead for the next receives may be there
        assert [p for p in services.blobs.staging.staged() if p.stat().st_size] == []


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_dataset_fails_and_next_store_succeeds(
    association: Association, sqlite_server: PacsServer, tmp_path: Path
) -> None:
    truncated = _write(tmp_path, "cut.dcm", f.truncated_bytes(f.ct_instance(PatientID="T-1")))
    good = f.write_part10(f.ct_instance(PatientID="T-2"), tmp_path / "good.dcm")

    status, comment = _send(association, truncated)
    assert status == 0xC000
    assert "truncated" in comment
    _nothing_left(sqlite_server, 0)

    assert _send(association, good) == (0x0000, "")
    _nothing_left(sqlite_server, 1)


def test_garbage_dataset_fails_with_cannot_understand(
    association: Association, sqlite_server: PacsServer, tmp_path: Path
) -> None:
    valid = f.to_part10_bytes(f.ct_instance(PatientID="G-1"))
    body = dataset_bytes(valid)
    noise = bytes((n * 151 + 7) % 256 for n in range(len(body)))
    garbage = _write(tmp_path, "garbage.dcm", valid[: len(valid) - len(body)] + noise)

    status, comment = _send(association, garbage)

    assert status == 0xC000
    assert comment
    _nothing_left(sqlite_server, 0)
    good = f.write_part10(f.ct_instance(PatientID="G-2"), tmp_path / "good.dcm")
    assert _send(association, good)[0] == 0x0000


def test_missing_sop_instance_uid_fails(
    association: Association, sqlite_server: PacsServer, tmp_path: Path
) -> None:
    path = f.write_part10(f.missing_sop_uid_instance(), tmp_path / "nouid.dcm")

    status, comment = _send(association, path)

    assert status in (0xA900, 0xC000)
    assert "SOPInstanceUID" in comment or "SOP Instance UID" in comment
    _nothing_left(sqlite_server, 0)


def test_invalid_study_uid_fails(
    association: Association, sqlite_server: PacsServer, tmp_path: Path
) -> None:
    bad = f.invalid_uid_instance("1.2.abc", keyword="StudyInstanceUID")
    path = f.write_part10(bad, tmp_path / "baduid.dcm")

    status, comment = _send(association, path)

    assert status == 0xC000
    assert "StudyInstanceUID" in comment and "not a valid UID" in comment
    _nothing_left(sqlite_server, 0)


def test_dataset_of_another_sop_class_fails_with_a900(
    association: Association, sqlite_server: PacsServer, tmp_path: Path
) -> None:
    """The request says MR (file meta), the data set says CT: PS3.4 B.2.3 0xA900."""
    data = f.to_part10_bytes(f.ct_instance(PatientID="M-1"))
    ct, mr = CTImageStorage.encode(), MRImageStorage.encode()
    assert len(ct) == len(mr) and data.index(ct) < len(data) - len(dataset_bytes(data))
    path = _write(tmp_path, "mismatch.dcm", data.replace(ct, mr, 1))  # the file meta only

    status, comment = _send(association, path)

    assert status == 0xA900
    assert "SOP Class" in comment
    _nothing_left(sqlite_server, 0)
