"""``pacs import``: bulk import of files and folders through the one ingest path.

A file without the Part 10 header (no preamble and ``DICM``: a bare data set, as some tools
and pydicom's own test files write them) is stored as STOW-RS stores one: a File Meta
Information group is made for it and the data set's bytes are kept (``part10.as_part10``).
Whatever is counted "not DICOM" carries its reason, so nothing is dropped without a word.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pacs.services import metrics
from pacs.services.errors import (
    InvalidInstance,
    NotDicom,
    OutOfResources,
    PacsError,
    SopClassMismatch,
)
from pacs.services.ingest import Incoming, IngestService, Origin, StoreStatus
from pacs.services.part10 import BARE_DATA_SET_LIMIT, as_part10, check_data_set_start, is_part10

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
    not_dicom: list[tuple[Path, str]] = field(default_factory=list)  # (file, why not)

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
                elif result is ImportResult.NOT_DICOM:
                    summary.not_dicom.append((path, reason))
                if on_file is not None:
                    on_file(path, result)
        return summary

    def _one(self, path: Path) -> tuple[ImportResult, str]:
        if path.name in _SKIPPED_NAMES:
            return ImportResult.NOT_DICOM, "a DICOMDIR (media directory), not an instance"
        started = time.perf_counter()
        try:
            outcome = self.ingest.store(_incoming(path), Origin(protocol="import"))
        except NotDicom as error:
            return ImportResult.NOT_DICOM, str(error).removeprefix("not DICOM: ")
        except PacsError as error:
            _count(metrics.FAILED, _status(error), started)
            return ImportResult.FAILED, str(error)
        except OSError as error:
            return ImportResult.FAILED, f"cannot read: {error.strerror or error}"
        _count(outcome.status.value, 0, started)
        if outcome.status is StoreStatus.ALREADY_PRESENT:
            return ImportResult.ALREADY_PRESENT, ""
        return ImportResult.STORED, ""


# The C-STORE status an import's failure would have had (PS3.4 B.2.3), for the metrics.
_STATUSES: tuple[tuple[type[PacsError], int], ...] = (
    (SopClassMismatch, 0xA900), (OutOfResources, 0xA700), (InvalidInstance, 0xC000))


def _status(error: PacsError) -> int:
    return next((status for kind, status in _STATUSES if isinstance(error, kind)), 0x0110)


def _count(outcome: str, status: int, started: float) -> None:
    """In the metrics of the process that imports (``pacs import`` exports none: a server's
    ``/metrics`` never shows its stores)."""
    metrics.store("import", outcome, status, time.perf_counter() - started)


def _incoming(path: Path) -> Incoming:
    """The file as it is, or, when it is a bare data set, wrapped in a Part 10 header (as
    STOW-RS does: ``dicomweb.stow``); what is neither raises :class:`NotDicom`."""
    with path.open("rb") as source:
        head = source.read(132)
    if is_part10(head):
        return Incoming.external_file(path)
    check_data_set_start(head)
    if path.stat().st_size > BARE_DATA_SET_LIMIT:
        raise InvalidInstance(f"a data set without a Part 10 header, larger than "
                              f"{BARE_DATA_SET_LIMIT >> 20} MB: too large to wrap in one")
    return Incoming.data(as_part10(path.read_bytes()))
