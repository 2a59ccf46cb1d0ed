"""The ingest service on a real index (SQLite and PostgreSQL) and a real file store."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from pacs.services.errors import (
    InvalidInstance,
    MissingAttribute,
    NotDicom,
    OutOfResources,
    StudyMismatch,
)
from pacs.services.ingest import (
    Expected,
    Incoming,
    IngestService,
    Origin,
    StoreOutcome,
    StoreStatus,
)
from pacs.services.workflow import StudyState
from storage.attributes import Level
from storage.blobs import FileStore
from storage.index import Index, InstanceRow, Repository
from tests.factories import datasets as f

ORIGIN = Origin(protocol="import")


pytestmark = pytest.mark.usefixtures("lenient_reading")


def _service(tmp_path: Path, index: Index, *, overwrite: bool = False) -> IngestService:
    return IngestService(blobs=FileStore(tmp_path / "data"), index=index, overwrite=overwrite)


def _rows(index: Index) -> dict[Level, int]:
    with index.unit_of_work() as repo:
        return repo.counts()


def test_store_then_resend_keeps_the_first_copy(tmp_path: Path, index: Index) -> None:
    service = _service(tmp_path, index)
    original = f.to_part10_bytes(f.ct_instance(PatientID="ING-1", StudyDescription="FIRST"))
    changed = f.to_part10_bytes(f.ct_instance(PatientID="ING-1", StudyDescription="SECOND"))

    first = service.store(Incoming.data(original), ORIGIN)
    same = service.store(Incoming.data(original), ORIGIN)
    other = service.store(Incoming.data(changed), ORIGIN)

    assert first.status is StoreStatus.STORED
    assert first.study_state == StudyState.ARCHIVED
    assert same.status is StoreStatus.ALREADY_PRESENT
    assert other.status is StoreStatus.ALREADY_PRESENT
    assert _rows(index) == {Level.PATIENT: 1, Level.STUDY: 1, Level.SERIES: 1, Level.IMAGE: 1}
    blobs = service.blobs
    assert len(list(blobs.keys())) == 1
    with index.unit_of_work() as repo:
        stored = repo.find_instance(first.sop_instance_uid)
    assert stored is not None
    with blobs.open(stored.blob_key) as handle:
        assert handle.read() == original


def test_overwrite_replaces_the_file_and_removes_the_old_one(
    tmp_path: Path, index: Index
) -> None:
    service = _service(tmp_path, index, overwrite=True)
    original = f.to_part10_bytes(f.ct_instance(PatientID="ING-2", StudyDescription="FIRST"))
    changed = f.to_part10_bytes(f.ct_instance(PatientID="ING-2", StudyDescription="SECOND"))

    service.store(Incoming.data(original), ORIGIN)
    replaced = service.store(Incoming.data(changed), ORIGIN)

    assert replaced.status is StoreStatus.REPLACED
    assert _rows(index)[Level.IMAGE] == 1
    keys = list(service.blobs.keys())
    assert len(keys) == 1
    with service.blobs.open(keys[0]) as handle:
        assert handle.read() == changed


def test_one_patient_study_series_for_many_instances(tmp_path: Path, index: Index) -> None:
    service = _service(tmp_path, index)
    for number in range(1, 6):
        ds = f.ct_instance(PatientID="ING-3", InstanceNumber=number)
        assert service.store(Incoming.data(f.to_part10_bytes(ds)), ORIGIN).status is (
            StoreStatus.STORED
        )
    other_series = f.ct_instance(PatientID="ING-3", SeriesNumber=2)
    service.store(Incoming.data(f.to_part10_bytes(other_series)), ORIGIN)

    assert _rows(index) == {Level.PATIENT: 1, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 6}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (f.not_dicom_bytes(), NotDicom),
        (f.corrupt_bytes(), InvalidInstance),
        (f.truncated_bytes(), InvalidInstance),
        (f.to_part10_bytes(f.missing_sop_uid_instance()), MissingAttribute),
        (f.to_part10_bytes(f.invalid_uid_instance("1.2.abc", keyword="SeriesInstanceUID")),
         MissingAttribute),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(
    tmp_path: Path, index: Index, data: bytes, error: type[Exception]
) -> None:
    service = _service(tmp_path, index)

    with pytest.raises(error):
        service.store(Incoming.data(data), ORIGIN)

    assert _rows(index)[Level.IMAGE] == 0
    assert list(service.blobs.keys()) == []
    assert list(service.blobs.staging.staged()) == []


def test_an_instance_of_another_study_than_expected_is_refused_and_leaves_nothing(
    tmp_path: Path, index: Index
) -> None:
    """STOW-RS ``POST /studies/{study}``: the check comes before anything is written."""
    service = _service(tmp_path, index)
    mine, other = f.ct_instance(PatientID="ING-6"), f.ct_instance(PatientID="ING-7")
    expected = Expected(study_instance_uid=str(mine.StudyInstanceUID))

    stored = service.store(Incoming.data(f.to_part10_bytes(mine)), ORIGIN, expected)
    with pytest.raises(StudyMismatch) as refused:
        service.store(Incoming.data(f.to_part10_bytes(other)), ORIGIN, expected)

    assert stored.status is StoreStatus.STORED
    assert refused.value.sop_instance_uid == other.SOPInstanceUID
    assert refused.value.sop_class_uid == other.SOPClassUID
    assert _rows(index)[Level.IMAGE] == 1
    assert len(list(service.blobs.keys())) == 1
    assert list(service.blobs.staging.staged()) == []


def test_check_room_refuses_what_would_eat_into_the_reserve(
    tmp_path: Path, index: Index
) -> None:
    blobs = FileStore(tmp_path / "data")
    free = blobs.free_bytes()
    service = IngestService(blobs=blobs, index=index, min_free_bytes=free // 2)

    service.check_room(free // 4)
    with pytest.raises(OutOfResources, match="no room"):
        service.check_room(free // 4 * 3)


def test_a_failed_index_commit_removes_the_new_file(tmp_path: Path, index: Index) -> None:
    """If the index transaction fails, the blob written for it is deleted (no orphan file).
    Dropping the instance table makes the transaction fail for real."""
    service = _service(tmp_path, index)
    good = f.to_part10_bytes(f.ct_instance(PatientID="ING-4"))
    service.store(Incoming.data(good), ORIGIN)
    with index.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE instance")

    with pytest.raises(Exception):  # noqa: B017 - any index failure will do
        service.store(Incoming.data(f.to_part10_bytes(f.ct_instance(PatientID="ING-5"))),
                      ORIGIN)

    assert len(list(service.blobs.keys())) == 1  # only the first, committed one
    assert list(service.blobs.staging.staged()) == []


def test_with_the_index_elsewhere_the_blob_is_on_disk_before_its_row_is_committed(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (or SQLite on another disk): several servers may share the index and the
    store, so no row may be seen before its blob is durable."""
    from storage import blobs

    events: list[str] = []
    real_syncfs = blobs._SYNCFS

    def syncfs(fd: int) -> int:
        events.append("sync")
        return real_syncfs(fd) if real_syncfs is not None else 0

    real_unit_of_work = index.unit_of_work

    def unit_of_work(*, write: bool = False, **kwargs: object) -> object:
        if write:
            events.append("index")
        return real_unit_of_work(write=write, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(blobs, "_SYNCFS", syncfs)
    monkeypatch.setattr(index, "unit_of_work", unit_of_work)
    service = _service(tmp_path, index)
    assert not service.rows_may_outrun_blobs

    service.store(Incoming.data(f.to_part10_bytes(f.ct_instance())), ORIGIN)

    assert events == ["sync", "index"]
    events.clear()  # a batch (STOW-RS): every blob synced before its one transaction
    service.store_many([Incoming.data(f.to_part10_bytes(f.ct_instance(InstanceNumber=n)))
                        for n in range(3)], ORIGIN, workers=3)
    assert events[-1] == "index" and set(events[:-1]) == {"sync"}


def test_on_one_file_system_one_sync_after_the_commit_makes_blob_and_row_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite beside the blobs (the default): the index's commit is made durable by the blob
    store's syncfs, which starts after the rename and after the commit. One device flush per
    store, no fdatasync of the log besides."""
    from storage import blobs
    from storage.index import database

    store = FileStore(tmp_path / "data")
    db = tmp_path / "data" / "index.sqlite"
    shared = Index(f"sqlite:///{db}", file_system_sync=store.sync_for)
    shared.upgrade()
    assert shared.commit_sync is store.sync
    data = f.to_part10_bytes(f.ct_instance())
    key = hashlib.sha256(data).hexdigest()
    real_syncfs = blobs._SYNCFS
    seen: list[tuple[bool, int]] = []  # per sync: (blob in place, rows committed)

    def syncfs(fd: int) -> int:
        with sqlite3.connect(db) as other:
            rows = other.execute("SELECT count(*) FROM instance").fetchone()[0]
        seen.append(((store.objects / key[:2] / key).exists(), rows))
        return real_syncfs(fd) if real_syncfs is not None else 0

    log_syncs: list[Path] = []
    monkeypatch.setattr(blobs, "_SYNCFS", syncfs)
    monkeypatch.setattr(database, "_fdatasync", lambda path: log_syncs.append(path))
    try:
        service = IngestService(blobs=store, index=shared)
        assert service.rows_may_outrun_blobs
        assert service.store(Incoming.data(data), ORIGIN).status is StoreStatus.STORED
        assert seen == [(True, 1)] and log_syncs == []
        # a re-send: its commit's sync is its only one too
        assert service.store(Incoming.data(data), ORIGIN).status is StoreStatus.ALREADY_PRESENT
        assert len(seen) == 2 and log_syncs == []
        # any other write (an audit row, a review) syncs the log alone, not the file system
        with shared.unit_of_work(write=True) as repo:
            repo.audit.append(actor="test", action="note", outcome="ok")
        assert len(seen) == 2 and log_syncs == [db.parent / "index.sqlite-wal"]
    finally:
        shared.dispose()


def test_an_index_on_another_file_system_keeps_its_own_log_sync(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data")
    beside = Index(f"sqlite:///{tmp_path / 'data' / 'index.sqlite'}",
                   file_system_sync=store.sync_for)
    other_disk = Path("/dev/shm")
    if not other_disk.is_dir() or store.sync_for(other_disk) is not None:
        pytest.skip("no second file system (/dev/shm) to put an index on")
    folder = Path(tempfile.mkdtemp(dir=other_disk))
    elsewhere = Index(f"sqlite:///{folder / 'index.sqlite'}", file_system_sync=store.sync_for)
    try:
        assert beside.commit_sync is store.sync
        assert elsewhere.commit_sync is not None and elsewhere.commit_sync is not store.sync
    finally:
        beside.dispose()
        elsewhere.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_blob_that_cannot_be_made_durable_is_refused_and_removed(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctypes
    import errno

    from storage import blobs

    def failing_syncfs(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(blobs, "_SYNCFS", failing_syncfs)
    service = _service(tmp_path, index)

    with pytest.raises(OutOfResources, match="could not be made durable"):
        service.store(Incoming.data(f.to_part10_bytes(f.ct_instance())), ORIGIN)

    assert _rows(index)[Level.IMAGE] == 0
    assert list(service.blobs.keys()) == []
    assert list(service.blobs.staging.staged()) == []


def test_store_many_indexes_a_batch_in_one_transaction_each_instance_on_its_own(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What STOW-RS sends: good instances, a corrupt one, one of another study than the
    request's, the same bytes twice; one write transaction for them all, an answer each."""
    service = _service(tmp_path, index)
    study = f.ct_instance().StudyInstanceUID
    good = [f.ct_instance(StudyInstanceUID=study, InstanceNumber=n) for n in (1, 2, 3)]
    twice = f.to_part10_bytes(good[2])
    other_study = f.ct_instance(PatientID="ELSEWHERE")
    writes: list[bool] = []
    real_unit_of_work = index.unit_of_work

    def unit_of_work(*, write: bool = False, files_too: bool = False) -> object:
        writes.append(write)
        return real_unit_of_work(write=write, files_too=files_too)

    monkeypatch.setattr(index, "unit_of_work", unit_of_work)
    answers = service.store_many([
        Incoming.data(f.to_part10_bytes(good[0])),
        Incoming.data(b"not a DICOM file at all" * 10),
        Incoming.data(f.to_part10_bytes(good[1])),
        Incoming.data(f.to_part10_bytes(other_study)),
        Incoming.data(twice),
        Incoming.data(twice),
    ], ORIGIN, Expected(study_instance_uid=study), workers=3)

    assert writes.count(True) == 1
    statuses = [a.status if not isinstance(a, Exception) else type(a) for a in answers]
    assert statuses == [StoreStatus.STORED, NotDicom, StoreStatus.STORED, StudyMismatch,
                        StoreStatus.STORED, StoreStatus.ALREADY_PRESENT]
    monkeypatch.undo()
    assert _rows(index)[Level.IMAGE] == 3
    assert len(list(service.blobs.keys())) == 3  # the bytes sent twice: one blob, kept
    assert list(service.blobs.staging.staged()) == []


def test_store_many_commits_a_large_request_in_batches(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacs.services import ingest

    monkeypatch.setattr(ingest, "BATCH", 4)
    service = _service(tmp_path, index)
    writes: list[bool] = []
    real_unit_of_work = index.unit_of_work

    def unit_of_work(*, write: bool = False, files_too: bool = False) -> object:
        writes.append(write)
        return real_unit_of_work(write=write, files_too=files_too)

    monkeypatch.setattr(index, "unit_of_work", unit_of_work)
    answers = service.store_many(
        [Incoming.data(f.to_part10_bytes(f.ct_instance(InstanceNumber=n))) for n in range(9)],
        ORIGIN,
    )

    assert [a.status for a in answers if isinstance(a, StoreOutcome)] == [StoreStatus.STORED] * 9
    assert writes.count(True) == 3  # 4 + 4 + 1


def test_an_instance_the_index_refuses_is_rolled_back_alone(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database refusal in one instance's savepoint (a real constraint violation, after its
    rows were written) undoes that instance only; the batch's others are committed."""
    service = _service(tmp_path, index)
    real_upsert = IngestService._upsert

    def upsert(self: IngestService, repo: Repository, row: InstanceRow, origin: Origin) -> object:
        answer = real_upsert(self, repo, row, origin)
        if row.values[Level.PATIENT]["patient_id"] == "REFUSED":
            repo.connection.execute(text("INSERT INTO patient (patient_id) VALUES (NULL)"))
        return answer

    monkeypatch.setattr(IngestService, "_upsert", upsert)
    refused = f.ct_instance(PatientID="REFUSED")
    answers = service.store_many([
        Incoming.data(f.to_part10_bytes(f.ct_instance(PatientID="FINE-1"))),
        Incoming.data(f.to_part10_bytes(refused)),
        Incoming.data(f.to_part10_bytes(f.ct_instance(PatientID="FINE-2"))),
    ], ORIGIN)

    assert isinstance(answers[1], InvalidInstance)
    assert all(isinstance(answers[n], StoreOutcome) for n in (0, 2))
    with index.unit_of_work() as repo:
        assert repo.find_instance(refused.SOPInstanceUID) is None
        assert repo.counts()[Level.PATIENT] == 2  # its patient, study and series undone too
    assert len(list(service.blobs.keys())) == 2  # and its file removed
