"""The S3 blob store against moto's S3 server on 127.0.0.1 (a real process, real HTTP): puts,
ranged reads, listing, deletes, and what a store does when the object store goes away."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.services.consistency import ConsistencyService
from pacs.services.errors import OutOfResources
from pacs.services.ingest import Incoming, IngestService, Origin, StoreStatus
from storage.attributes import Level
from storage.blob_store import BlobNotFound, BlobStoreUnavailable
from storage.index import Index
from storage.s3 import S3Store
from storage.staging import Staging
from tests.factories import datasets as f
from tests.support.moto import MotoS3, moto_s3


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server, pytest.MonkeyPatch.context() as env:
        for name, value in server.env().items():
            env.setenv(name, value)
        yield server


pytestmark = pytest.mark.usefixtures("lenient_reading")


def _store(moto: MotoS3, tmp_path: Path, bucket: str | None = None, **options: int) -> S3Store:
    return S3Store(bucket=bucket or moto.bucket(), prefix="archive/",
                   staging=Staging(tmp_path / "tmp"), **options)


@pytest.fixture
def store(moto: MotoS3, tmp_path: Path) -> Iterator[S3Store]:
    built = _store(moto, tmp_path)
    try:
        yield built
    finally:
        built.close()


def _data(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def test_put_read_range_stat_list_delete(store: S3Store, moto: MotoS3) -> None:
    data = _data(300_000)
    key = hashlib.sha256(data).hexdigest()

    placed = store.commit(store.staging.stage_bytes(data))

    assert placed.created and placed.info.key == key
    assert moto.objects(store.bucket) == {f"archive/{key[:2]}/{key}": data}
    assert store.exists(key) and list(store.keys()) == [key]
    assert store.stat(key).sha256 == key and store.stat(key).size == len(data)
    assert 0 <= store.age(key) < 3600
    with store.open(key) as reader:
        reader.seek(123_456)
        assert reader.read(1000) == data[123_456:124_456]
        reader.seek(-10, io.SEEK_END)
        assert reader.read() == data[-10:]
        reader.seek(0)
        assert reader.read() == data
    assert b"".join(store.read_chunks(key, 4096)) == data

    store.delete(key)
    store.delete(key)  # idempotent

    assert not store.exists(key) and list(store.keys()) == []
    with pytest.raises(BlobNotFound):
        store.open(key)
    with pytest.raises(BlobNotFound):
        list(store.read_chunks(key))
    with pytest.raises(BlobNotFound):
        store.open("../../etc/passwd")  # keys are hashes, never names


def test_the_same_bytes_twice_are_one_object_created_once(store: S3Store, moto: MotoS3) -> None:
    first = store.commit(store.staging.stage_bytes(b"same bytes"))
    second = store.commit(store.staging.stage_bytes(b"same bytes"))

    assert first.created and not second.created  # a failure after the second keeps it
    assert len(moto.objects(store.bucket)) == 1


def test_streams_read_range_by_range(moto: MotoS3, tmp_path: Path) -> None:
    """A blob larger than a range comes back whole, in order, from several ranged GETs; a
    copy for a file sender is identical and gone after the send."""
    store = _store(moto, tmp_path, range_size=64 * 1024)
    try:
        data = _data(1_000_003, seed=1)
        key = store.commit(store.staging.stage_bytes(data)).info.key

        assert b"".join(store.read_chunks(key, 10_000)) == data
        with store.as_file(key) as path:
            assert path.read_bytes() == data
            assert path.parent == store.staging.folder
        assert not path.exists()
    finally:
        store.close()


def test_large_blobs_go_up_in_parts(moto: MotoS3, tmp_path: Path) -> None:
    store = _store(moto, tmp_path, multipart_over=6 << 20, part_size=5 << 20)
    try:
        data = _data(11 << 20, seed=2)
        staged = store.staging.stage_bytes(data)
        staged.content = None  # from the file, as a large received instance is

        placed = store.commit(staged)
        again = store.commit(store.staging.stage_bytes(data))

        assert placed.created and not again.created
        assert store.stat(placed.info.key).sha256 == placed.info.key
        assert moto.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    finally:
        store.close()


def test_keys_are_only_blobs_under_the_prefix(store: S3Store, moto: MotoS3) -> None:
    key = store.commit(store.staging.stage_bytes(b"mine")).info.key
    s3 = moto.client()
    s3.put_object(Bucket=store.bucket, Key=f"other/{key[:2]}/{key}", Body=b"not under prefix")
    s3.put_object(Bucket=store.bucket, Key="archive/README", Body=b"not a blob")
    s3.put_object(Bucket=store.bucket, Key=f"archive/zz/{key}", Body=b"wrong folder")

    assert list(store.keys()) == [key]


def test_a_missing_bucket_is_named_at_start(moto: MotoS3, tmp_path: Path) -> None:
    store = S3Store(bucket="no-such-bucket", prefix="", staging=Staging(tmp_path / "tmp"))
    try:
        with pytest.raises(BlobStoreUnavailable) as raised:
            store.check()
    finally:
        store.close()
    assert "cannot reach the bucket" in str(raised.value)
    assert "127.0.0.1" not in str(raised.value)


def test_a_stopped_object_store_refuses_stores_and_indexes_nothing(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object store goes away: each store is out of resources (0xA700), no row is left
    without its object and nothing stays staged; reads say the store is unavailable."""
    with moto_s3(tmp_path / "moto") as moto:
        for name, value in moto.env(AWS_MAX_ATTEMPTS="1").items():
            monkeypatch.setenv(name, value)
        store = _store(moto, tmp_path)
        index = Index(database_url)
        index.upgrade()
        ingest = IngestService(blobs=store, index=index)
        try:
            kept = ingest.store(Incoming.data(f.to_part10_bytes(f.ct_instance(seed=1))),
                                Origin(protocol="import"))
            assert kept.status is StoreStatus.STORED
            kept_key = next(iter(store.keys()))

            moto.stop()

            with pytest.raises(OutOfResources) as refused:
                ingest.store(Incoming.data(f.to_part10_bytes(f.ct_instance(seed=2))),
                             Origin(protocol="import"))
            assert str(refused.value) == "the blob store is unavailable"
            with pytest.raises(BlobStoreUnavailable) as unreadable:
                store.open(kept_key)
            assert "cannot be reached" in str(unreadable.value)
            with pytest.raises(OutOfResources):
                ConsistencyService(blobs=store, index=index).check()
            with index.unit_of_work() as repo:
                assert repo.counts()[Level.IMAGE] == 1
                assert repo.find_instance(kept.sop_instance_uid) is not None
            assert store.staging.staged() == []
        finally:
            store.close()
            index.dispose()


def test_ingest_and_check_on_the_object_store(
    store: S3Store, moto: MotoS3, database_url: str
) -> None:
    index = Index(database_url)
    index.upgrade()
    try:
        ingest = IngestService(blobs=store, index=index)
        data = f.to_part10_bytes(f.ct_instance(seed=3))
        outcome = ingest.store(Incoming.data(data), Origin(protocol="import"))
        again = ingest.store(Incoming.data(data), Origin(protocol="import"))
        consistency = ConsistencyService(blobs=store, index=index)
        clean = consistency.check()
        with index.unit_of_work() as repo:
            key = repo.find_instance(outcome.sop_instance_uid).blob_key  # type: ignore[union-attr]
        orphan = store.commit(store.staging.stage_bytes(b"no row names me")).info.key
        store.delete(key)
        broken = consistency.check()
    finally:
        index.dispose()

    assert outcome.status is StoreStatus.STORED
    assert again.status is StoreStatus.ALREADY_PRESENT
    assert moto.objects(store.bucket) == {f"archive/{orphan[:2]}/{orphan}": b"no row names me"}
    assert clean.consistent and clean.instances == 1 and clean.blobs == 1
    assert broken.missing == [(outcome.sop_instance_uid, key)]
    assert broken.orphans == [orphan]
    assert store.staging.staged() == []
