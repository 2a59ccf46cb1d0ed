"""File-backed blob store: durable, atomic puts under content-derived paths.

A blob's key is the SHA-256 of its bytes, and its path is ``objects/ab/<sha256>``: never a
UID or any other string a peer sent. A put is staged in this process's staging folder under
``tmp/`` (same file system, :mod:`storage.staging`), then placed by :meth:`FileStore.place`:
renamed into its content address, and made durable by a sync of the store's file system
(``syncfs``) that started after the rename. Concurrent puts share that sync: one device flush
makes all of them durable, where a file fsync and a folder fsync per put cost two each. The
caller reports success only once the blob and its index row are both durable; an index on the
same file system can make its commits durable with the same sync (:meth:`FileStore.sync_for`),
so one flush covers both.

Because a blob reaches its name before it is durable, a name left by a crash may hold less than
its content: an existing blob is therefore trusted only when its bytes hash to its name, and
replaced otherwise.

The store knows nothing of DICOM. (The interface it implements, and the values it passes, are in
:mod:`storage.blob_store`; they are importable from here too.)
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from storage.blob_store import (
    IN_MEMORY_UP_TO,
    BlobInfo,
    BlobNotFound,
    BlobStoreUnavailable,
    CommittedBlob,
    StagedBlob,
    is_key,
)
from storage.staging import Staging, hash_file
from storage.sync import SharedSync, libc_function

__all__ = [
    "IN_MEMORY_UP_TO", "BlobInfo", "BlobNotFound", "BlobStoreUnavailable", "CommittedBlob",
    "FileStore", "StagedBlob",
]

_CHUNK = 1 << 20


class FileStore:
    """Blobs under ``root``: ``objects/`` (committed) and ``tmp/`` (staged: a folder for each
    process, :class:`storage.staging.Staging`)."""

    def __init__(self, root: Path, node: str | None = None) -> None:
        """``node``: this server's node id, the name of its staging folder (default
        ``<host>-<pid>``)."""
        self.root = root
        self.objects = root / "objects"
        self.staging = Staging(root / "tmp", node)
        self._sync = SharedSync(_FileSystem(root).sync, name="blob-sync")
        for prefix in range(256):
            (self.objects / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return str(self.objects)

    def check(self) -> None:
        """Nothing to ask: the store is the local file system (writes to the staging folder
        beside it are the test)."""

    def close(self) -> None:
        self.staging.close()

    def sync_for(self, path: Path) -> SharedSync | None:
        """The store's file system sync, when it also makes ``path`` (a file, or a file yet
        to be made in an existing folder) durable: both on one file system. None otherwise."""
        folder = path if path.is_dir() else path.parent
        try:
            same = os.stat(folder).st_dev == os.stat(self.root).st_dev
        except OSError:
            return None
        return self._sync if same else None

    @property
    def sync(self) -> SharedSync:
        """The sync of the store's file system, shared by everything that waits for it."""
        return self._sync

    def place(self, staged: StagedBlob, *, start_sync: bool = True) -> CommittedBlob:
        """Make a staged blob addressable: rename it into place, and start the sync that
        makes it durable (:meth:`CommittedBlob.wait_durable` waits for it), so that the
        caller's own work overlaps it. With ``start_sync`` false no sync starts now: the
        caller's next sync of the same file system (an index commit on it, see
        :meth:`sync_for`) covers the blob, and waiting runs one only if none came since.

        ``created`` tells whether this call created the blob: one with the same content may be
        there already (the same instance stored before), then the staged copy is dropped. A
        file at that name whose bytes do not hash to it (left half-written by a crash) is
        replaced, and not counted as created: a row may already name it.
        """
        target = self._path(staged.sha256)
        created = True
        if target.exists():
            if hash_file(target) == (staged.sha256, staged.size):
                self.staging.discard(staged)
                return CommittedBlob(staged.info, created=False, durable=self._durable(start_sync))
            created = False
        os.replace(staged.path, target)
        staged.gone = True
        return CommittedBlob(staged.info, created=created, durable=self._durable(start_sync))

    def _durable(self, start_sync: bool) -> Callable[[], None]:
        return self._sync.request() if start_sync else self._sync.later()

    def commit(self, staged: StagedBlob) -> CommittedBlob:
        """:meth:`place`, returning once the blob is durable."""
        committed = self.place(staged)
        committed.wait_durable()
        return committed

    # -- committed blobs -----------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def read_chunks(self, key: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """Stream a blob without holding it in memory."""
        with self.open(key) as source:
            yield from iter(lambda: source.read(chunk_size), b"")

    def local_path(self, key: str) -> Path:
        """The file of a committed blob. Read-only: never write to or move it."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        return path

    @contextmanager
    def as_file(self, key: str) -> Iterator[Path]:
        """The blob's own file (:meth:`local_path`): nothing is copied."""
        yield self.local_path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> BlobInfo:
        """Size and a freshly computed SHA-256 of a committed blob (for consistency checks)."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        digest, size = hash_file(path)
        return BlobInfo(key=key, size=size, sha256=digest)

    def age(self, key: str) -> float:
        """Seconds since the blob was written."""
        try:
            return time.time() - self._path(key).stat().st_mtime
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def free_bytes(self) -> int:
        """Space left for unprivileged writers on the store's file system."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def keys(self) -> Iterator[str]:
        """Every committed key (for ``pacs check``)."""
        for path in self.objects.glob("*/*"):
            if path.is_file() and is_key(path.name):
                yield path.name

    def _path(self, key: str) -> Path:
        if not is_key(key):
            raise BlobNotFound(key)
        return self.objects / key[:2] / key


class _FileSystem:
    """Syncs the file system of ``root``: ``syncfs`` (Linux), else a ``sync`` of all of them."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._fd: int | None = None

    def sync(self) -> OSError | None:
        try:
            if _SYNCFS is None:
                os.sync()
                return None
            if self._fd is None:
                self._fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if _SYNCFS(self._fd) != 0:
                number = ctypes.get_errno()
                return OSError(number, f"syncfs: {os.strerror(number)}")
        except OSError as error:
            return error
        return None


_SYNCFS = libc_function("syncfs", [ctypes.c_int])  # None: os.sync() instead


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
