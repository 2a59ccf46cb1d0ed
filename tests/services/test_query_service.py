"""QueryService on a real index: the result cap, batched reads, named errors."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest

from pacs.services.errors import InvalidQuery
from pacs.services.query import QueryService
from storage.attributes import Level, extract, request_attributes
from storage.blobs import BlobInfo
from storage.index import Index, InstanceRow, StudyState
from storage.query import Condition, Query, SingleValue, condition
from tests.factories import datasets as f


@pytest.fixture
def index(database_url: str) -> Iterator[Index]:
    built = Index(database_url)
    built.upgrade()
    with built.unit_of_work(write=True) as repo:
        for i in range(7):
            ds = f.ct_instance(PatientID=f"P{i}", PatientName=f"DOE^{i}", Rows=8, Columns=8)
            key = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()
            repo.upsert_instance(
                InstanceRow(extract(ds), request_attributes(ds), "1.2.840.10008.1.2.1",
                            BlobInfo(key, 10, key)),
                initial_state=StudyState.ARCHIVED, overwrite=False,
            )
    try:
        yield built
    finally:
        built.dispose()


def _ids(rows: Iterator[dict[str, object]]) -> list[object]:
    return [row["PatientID"] for row in rows]


def test_results_stop_at_the_cap_with_a_warning(
    index: Index, caplog: pytest.LogCaptureFixture
) -> None:
    service = QueryService(index=index, max_results=5, batch_size=2)

    with caplog.at_level(logging.WARNING, logger="pacs.services.query"):
        capped = _ids(service.find(Query(Level.STUDY)))

    assert capped == [f"P{i}" for i in range(5)]
    assert [r.getMessage() for r in caplog.records] == ["result capped at 5"]


def test_a_smaller_limit_or_an_exact_fit_is_not_capped(
    index: Index, caplog: pytest.LogCaptureFixture
) -> None:
    service = QueryService(index=index, max_results=7, batch_size=3)

    with caplog.at_level(logging.WARNING, logger="pacs.services.query"):
        limited = _ids(service.find(Query(Level.STUDY, limit=4, offset=2)))
        everything = _ids(service.find(Query(Level.PATIENT)))
        matched = _ids(service.find(Query(Level.STUDY, (condition("PatientID", "P3"),))))

    assert limited == ["P2", "P3", "P4", "P5"]
    assert everything == [f"P{i}" for i in range(7)]
    assert matched == ["P3"]
    assert caplog.records == []


def test_invalid_queries_raise_a_named_error_at_the_call(index: Index) -> None:
    service = QueryService(index=index)
    unsupported = Query(Level.STUDY, (Condition("KVP", SingleValue("120")),))

    with pytest.raises(InvalidQuery, match="KVP"):
        service.find(unsupported)
    with pytest.raises(InvalidQuery, match="KVP"):
        service.instances(unsupported)


def test_instances_lists_what_to_retrieve(index: Index) -> None:
    service = QueryService(index=index)

    items = service.instances(Query(Level.PATIENT, (condition("PatientName", "doe^3"),)))

    assert [(i.sop_class_uid, i.blob_size) for i in items] == [(f.CT_IMAGE, 10)]


def test_series_and_image_queries_are_not_capped(
    index: Index, caplog: pytest.LogCaptureFixture
) -> None:
    service = QueryService(index=index, max_results=2, batch_size=2)

    with caplog.at_level(logging.WARNING, logger="pacs.services.query"):
        images = list(service.find(Query(Level.IMAGE)))
        studies = list(service.find(Query(Level.STUDY)))

    assert len(images) == 7  # every instance, though the cap is 2
    assert len(studies) == 2
    assert [r.getMessage() for r in caplog.records] == ["result capped at 2"]
