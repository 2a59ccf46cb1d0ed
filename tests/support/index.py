"""Filling an index directly, as the ingest service's index step does, without files."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

import pydicom
from pydicom.dataset import Dataset

from pacs.services.workflow import VISIBLE_TO_VIEWERS, StudyState
from storage.attributes import extract, request_attributes
from storage.blobs import BlobInfo
from storage.index import Index, InstanceRow
from tests.factories.datasets import to_part10_bytes


def index_datasets(
    index: Index,
    datasets: Iterable[Dataset],
    *,
    state: StudyState = StudyState.ARCHIVED,
    blob_size: int = 100,
) -> None:
    """Index ``datasets`` in one transaction (read back from Part 10 bytes, then extracted, as
    ingest reads them); the blob keys are made up, no file is written."""
    with index.unit_of_work(write=True) as repository:
        for original in datasets:
            ds = pydicom.dcmread(io.BytesIO(to_part10_bytes(original)))
            key = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()
            row = InstanceRow(extract(ds), request_attributes(ds),
                              str(ds.file_meta.TransferSyntaxUID), BlobInfo(key, blob_size, key))
            repository.upsert_instance(row, initial_state=state, overwrite=False,
                                      visible_states=VISIBLE_TO_VIEWERS)
