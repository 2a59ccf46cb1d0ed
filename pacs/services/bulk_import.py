"""``pacs import``: bulk import of files and folders through the one ingest path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pacs.services.errors import NotDicom, PacsError
from pacs.services.ingest import Incoming, IngestService, Origin, StoreStatus

_SKIPPED_NAMES = frozenset({"DICOMDIR"})  # a media directory, not an instance


class ImportResult(StrEnum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"
    NOT_DICOM = "not DICOM"
    FAILED = "failed"


@dataclass
class ImportSummary:
    counts: dict[ImportResult, int] = field(default_factory=lambda: dict.fromkeys(ImportResult, 0))
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.counts[ImportResult.FAILED] > 0


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Files named, and every file under folders named, in a stable order."""
    for path in paths:
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(folder) / name
        else:
            yield path


class ImportService:
    def __init__(self, ingest: IngestService, *, workers: int = 4) -> None:
        self.ingest = ingest
        self.workers = workers

    def import_paths(
        self, paths: list[Path], on_file: Callable[[Path, ImportResult], None] | None = None
    ) -> ImportSummary:
        summary = ImportSummary()
        files = list(iter_files(paths))
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for path, (result, reason) in zip(files, pool.map(self._one, files), strict=True):
                summary.counts[result] += 1
                if result is ImportResult.FAILED:
                    summary.failures.append((path, reason))
                if on_file is not None:
                    on_file(path, result)
        return summary

    def _one(self, path: Path) -> tuple[ImportResult, str]:
        if path.name in _SKIPPED_NAMES:
            return ImportResult.NOT_DICOM, "DICOMDIR"
        try:
            outcome = self.ingest.store(Incoming.external_file(path), Origin(protocol="import"))
        except NotDicom as error:
            return ImportResult.NOT_DICOM, str(error)
        except PacsError as error:
            return ImportResult.FAILED, str(error)
        except OSError as error:
            return ImportResult.FAILED, f"cannot read: {error.strerror or error}"
        if outcome.status is StoreStatus.ALREADY_PRESENT:
            return ImportResult.ALREADY_PRESENT, ""
        return ImportResult.STORED, ""
