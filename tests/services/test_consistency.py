"""The start-up recovery of rows whose blob a crash lost, on a real index and file store."""

from __future__ import annotations

import time
from typing import Any
from pathlib import Path

import pydicom
import pytest

from pacs.services.consistency import ConsistencyService
from pacs.services.ingest import Incoming, IngestService, Origin
from storage.attributes import Level
from storage.blobs import FileStore
from storage.index import Index
from tests.factories import datasets as f

ORIGIN = Origin(protocol="import")


def _store(service: IngestService, **values: Any) -> str:
    outcome = service.store(Incoming.data(f.to_part10_bytes(f.ct_instance(**values))), ORIGIN)
    time.sleep(0.002)  # distinct receive times, so "newest" is well defined
    return outcome.sop_instance_uid


def _key(index: Index, uid: str) -> str:
    with index.unit_of_work() as repo:
        stored = repo.find_instance(uid)
    assert stored is not None
    return stored.blob_key


@pytest.fixture(autouse=True)
def lenient_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


def test_the_newest_rows_whose_blob_is_missing_or_not_whole_are_removed(
    tmp_path: Path, index: Index
) -> None:
    blobs = FileStore(tmp_path / "data")
    service = IngestService(blobs=blobs, index=index)
    old_lost = _store(service, PatientID="OLD", InstanceNumber=1)
    kept = _store(service, PatientID="KEPT", InstanceNumber=1)
    truncated = _store(service, PatientID="CRASH", InstanceNumber=1)
    missing = _store(service, PatientID="CRASH", InstanceNumber=2)
    # what a crash between the commit and the sync leaves: an empty name, or none at all
    (blobs.objects / _key(index, truncated)[:2] / _key(index, truncated)).write_bytes(b"")
    blobs.delete(_key(index, missing))
    blobs.delete(_key(index, old_lost))  # older than the window: not this check's business

    removed = ConsistencyService(blobs=blobs, index=index).recover_unsynced(newest=3)

    assert removed == 2
    with index.unit_of_work() as repo:
        assert repo.find_instance(truncated) is None and repo.find_instance(missing) is None
        assert repo.find_instance(kept) is not None
        assert repo.find_instance(old_lost) is not None
        counts = repo.counts()
    assert counts[Level.PATIENT] == 2  # CRASH's patient, study and series went with its rows
    assert counts[Level.IMAGE] == 2


def test_whole_blobs_are_left_alone(tmp_path: Path, index: Index) -> None:
    blobs = FileStore(tmp_path / "data")
    service = IngestService(blobs=blobs, index=index)
    uids = [_store(service, PatientID="P", InstanceNumber=n) for n in range(1, 4)]

    assert ConsistencyService(blobs=blobs, index=index).recover_unsynced(newest=10) == 0

    with index.unit_of_work() as repo:
        assert all(repo.find_instance(uid) is not None for uid in uids)
