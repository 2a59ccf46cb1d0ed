"""A running ``pacs serve`` per test module (SQLite, and PostgreSQL when switched on), with
helpers to fill it by C-STORE and to move a study out of the archived state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs.services.workflow import StudyState
from storage.index import Index
from tests.support import dcmtk
from tests.support.server import PacsServer


@dataclass
class WebArchive:
    server: PacsServer
    workdir: Path
    http: httpx.Client
    sent: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID → file sent

    @property
    def url(self) -> str:
        """The DICOMweb base URL."""
        return f"{self.server.base_url}/dicom-web"

    def store(self, datasets: Iterable[Dataset]) -> list[Path]:
        """C-STORE ``datasets`` with DCMTK storescu; every one must succeed."""
        files = dcmtk.store_datasets(self.server.dimse_port, datasets, workdir=self.workdir)
        for path in files:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            self.sent[uid] = path
        return files

    def set_state(self, study_instance_uid: str, state: StudyState) -> None:
        index = Index(self.server.database_url)
        try:
            with index.unit_of_work(write=True) as repository:
                assert repository.studies.set_state(study_instance_uid, state)
        finally:
            index.dispose()


@pytest.fixture(scope="module")
def web_archive(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebArchive]:
    """An empty running server for the module; tests fill it with ``store``."""
    root = tmp_path_factory.mktemp("web")
    server = PacsServer(data_dir=root / "data", database_url=module_database_url)
    server.start()
    try:
        with httpx.Client(timeout=60) as http:
            yield WebArchive(server, root, http)
    finally:
        server.stop()
