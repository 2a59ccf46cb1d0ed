"""The start-up recovery of rows whose blob a crash lost, on a real index and file store."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pacs.services.consistency import AlreadyRunning, ConsistencyService, RunRecord
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


pytestmark = pytest.mark.usefixtures("lenient_reading")


def test_the_newest_rows_whose_blob_is_missing_or_not_whole_are_removed(
    tmp_path: Path, index: Index
) -> None:
    blobs = FileStore(tmp_path / "data")
    service = IngestService(blobs=blobs, index=index)
    before_the_run = _store(service, PatientID="EARLIER", InstanceNumber=1)
    run_start = dt.datetime.now(dt.UTC)
    old_lost = _store(service, PatientID="OLD", InstanceNumber=1)
    kept = _store(service, PatientID="KEPT", InstanceNumber=1)
    truncated = _store(service, PatientID="CRASH", InstanceNumber=1)
    missing = _store(service, PatientID="CRASH", InstanceNumber=2)
    # what a crash between the commit and the sync leaves: an empty name, or none at all
    (blobs.objects / _key(index, truncated)[:2] / _key(index, truncated)).write_bytes(b"")
    blobs.delete(_key(index, missing))
    blobs.delete(_key(index, old_lost))  # older than the window: not this check's business
    blobs.delete(_key(index, before_the_run))  # nor what was there before the crashed run

    consistency = ConsistencyService(blobs=blobs, index=index)
    removed = consistency.recover_unsynced(since=run_start, newest=3)

    assert removed == 2
    with index.unit_of_work() as repo:
        assert repo.find_instance(truncated) is None and repo.find_instance(missing) is None
        assert repo.find_instance(kept) is not None
        assert repo.find_instance(old_lost) is not None
        assert repo.find_instance(before_the_run) is not None
        counts = repo.counts()
    assert counts[Level.PATIENT] == 3  # CRASH's patient, study and series went with its rows
    assert counts[Level.IMAGE] == 3


def test_whole_blobs_are_left_alone(tmp_path: Path, index: Index) -> None:
    blobs = FileStore(tmp_path / "data")
    service = IngestService(blobs=blobs, index=index)
    run_start = dt.datetime.now(dt.UTC)
    uids = [_store(service, PatientID="P", InstanceNumber=n) for n in range(1, 4)]

    consistency = ConsistencyService(blobs=blobs, index=index)
    assert consistency.recover_unsynced(since=run_start, newest=10) == 0

    with index.unit_of_work() as repo:
        assert all(repo.find_instance(uid) is not None for uid in uids)


def test_the_run_record_tells_a_crashed_run_from_a_stopped_one(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite-serve.lock"
    record = RunRecord(path)
    assert record.claim() is None  # never ran
    before = dt.datetime.now(dt.UTC)
    record.begin()
    os.close(record._fd)  # type: ignore[arg-type]  # what kill -9 leaves: the lock released
    crashed = RunRecord(path).claim()
    assert crashed is not None and before - dt.timedelta(seconds=5) <= crashed <= before

    stopped = RunRecord(tmp_path / "other-serve.lock")
    stopped.claim()
    stopped.begin()
    stopped.end()
    assert RunRecord(tmp_path / "other-serve.lock").claim() is None


def test_a_second_server_on_the_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite-serve.lock"
    first = RunRecord(path)
    first.claim()
    first.begin()
    with pytest.raises(AlreadyRunning, match="one server per SQLite index"):
        RunRecord(path).claim()
    first.end()
    assert RunRecord(path).claim() is None  # free again once the first stopped


def test_an_unreadable_run_record_checks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite-serve.lock"
    path.write_text("not a time")
    assert RunRecord(path).claim() is None
