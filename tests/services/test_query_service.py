"""QueryService on a real index: the result cap, batched reads, named errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pacs.services.errors import InvalidQuery
from pacs.services.query import QueryService
from storage.attributes import Level
from storage.index import Index
from storage.query import Condition, Query, SingleValue, condition
from tests.factories import datasets as f
from tests.support.index import index_datasets


@pytest.fixture
def index(index: Index) -> Index:
    """Seven archived patients, one CT study each."""
    index_datasets(index, [
        f.ct_instance(PatientID=f"P{i}", PatientName=f"DOE^{i}", Rows=8, Columns=8)
        for i in range(7)
    ], blob_size=10)
    return index


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
