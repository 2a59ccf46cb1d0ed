"""File-backed blob store: durable, atomic puts under content-derived paths.

A blob's key is the SHA-256 of its bytes, and its path is ``objects/ab/<sha256>``: never a
UID or any other string a peer sent. A put is staged in ``tmp/`` (same file system), then
placed by :meth:`FileStore.place`: renamed into its content address, and made durable by a
sync of the store's file system (``syncfs``) that started after the rename. Concurrent puts
share that sync: one device flush makes all of them durable, where a file fsync and a folder
fsync per put cost two each. The caller reports success only once the blob and its index row
are both durable; an index on the same file system can make its commits durable with the same
sync (:meth:`FileStore.sync_for`), so one flush covers both.

Because a blob reaches its name before it is durable, a name left by a crash may hold less than
its content: an existing blob is therefore trusted only when its bytes hash to its name, and
replaced otherwise.

The store knows nothing of DICOM.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.sync import SharedSync, libc_function

_CHUNK = 1 << 20
IN_MEMORY_UP_TO = 16 << 20  # bytes: smaller staged blobs are parsed from memory
_HEX = frozenset("0123456789abcdef")


class BlobNotFound(LookupError):
    """No blob with this key."""


@dataclass(frozen=True)
class BlobInfo:
    """What the index records of a blob."""

    key: str
    size: int
    sha256: str


@dataclass
class StagedBlob:
    """Bytes written to the store's temporary area, not yet durable nor addressable."""

    path: Path
    size: int
    sha256: str
    content: bytes | None = None  # the bytes, when staging already had them in memory
    gone: bool = False  # moved into place or removed: nothing left in the temporary area

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    def header_stream(self) -> BinaryIO:
        """A readable stream for parsing: the bytes in memory when small (a parser that seeks
        is much faster there), the file itself otherwise."""
        if self.content is not None:
            return io.BytesIO(self.content)
        if self.size <= IN_MEMORY_UP_TO:
            return io.BytesIO(self.path.read_bytes())
        return self.open()

    @property
    def info(self) -> BlobInfo:
        return BlobInfo(key=self.sha256, size=self.size, sha256=self.sha256)


@dataclass(frozen=True)
class CommittedBlob:
    info: BlobInfo
    created: bool
    durable: Callable[[], None]

    def wait_durable(self) -> None:
        """Returns once the blob is on disk (raises the sync's OSError if it failed)."""
        self.durable()


class FileStore:
    """Blobs under ``root``: ``objects/`` (committed) and ``tmp/`` (staged, swept at start)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._tmp_resolved = self.tmp.resolve()
        self._sync = SharedSync(_FileSystem(root).sync, name="blob-sync")
        for prefix in range(256):
            (self.objects / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)

    # -- staging -------------------------------------------------------------------------
    def stage_file(
        self, path: Path, *, move: bool, digest: tuple[str, int] | None = None
    ) -> StagedBlob:
        """Stage an existing file: moved when it is already in :attr:`tmp`, copied otherwise.
        ``digest`` (SHA-256, size), when the writer of a file in :attr:`tmp` hashed it."""
        in_tmp = path.parent == self.tmp or path.parent.resolve() == self._tmp_resolved
        if move and in_tmp and digest is not None and path.stat().st_size == digest[1]:
            return StagedBlob(path=path, size=digest[1], sha256=digest[0])
        return self._stage_existing(path, move=move and in_tmp)

    def _stage_existing(self, path: Path, *, move: bool) -> StagedBlob:
        if move:
            if path.stat().st_size <= IN_MEMORY_UP_TO:  # read once: hash and parse the same bytes
                content = path.read_bytes()
                digest = hashlib.sha256(content).hexdigest()
                return StagedBlob(path=path, size=len(content), sha256=digest, content=content)
            digest, size = _hash_file(path)
            return StagedBlob(path=path, size=size, sha256=digest)
        with path.open("rb") as source:
            return self.stage_stream(iter(lambda: source.read(_CHUNK), b""))

    def stage_bytes(self, data: bytes) -> StagedBlob:
        staged = self.stage_stream([data])
        staged.content = data
        return staged

    def stage_stream(self, chunks: Iterable[bytes]) -> StagedBlob:
        """Write chunks to a new temporary file; removed again if the iterator raises."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedBlob(path=path, size=size, sha256=digest.hexdigest())

    def temp_path(self) -> Path:
        """A fresh name in the temporary area (for writers that create the file themselves)."""
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def discard(self, staged: StagedBlob) -> None:
        """Remove what is left of ``staged`` in the temporary area. (An unlink of a name that
        is not there still takes the folder's lock, which concurrent stores contend for.)"""
        if not staged.gone:
            staged.path.unlink(missing_ok=True)
            staged.gone = True

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
            if _hash_file(target) == (staged.sha256, staged.size):
                self.discard(staged)
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
        """The file of a committed blob, for senders that stream from a file (pynetdicom's
        chunked C-STORE send). Read-only: never write to or move it."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> BlobInfo:
        """Size and a freshly computed SHA-256 of a committed blob (for consistency checks)."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        digest, size = _hash_file(path)
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
            if path.is_file() and _is_key(path.name):
                yield path.name

    def sweep_tmp(self) -> int:
        """Remove staged files left by a crash or an aborted transfer; returns how many."""
        removed = 0
        for path in self.tmp.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _path(self, key: str) -> Path:
        if not _is_key(key):
            raise BlobNotFound(key)
        return self.objects / key[:2] / key


def _is_key(key: str) -> bool:
    return len(key) == 64 and set(key) <= _HEX


def _hash_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as source:
        digest = hashlib.file_digest(source, "sha256")
        return digest.hexdigest(), source.tell()


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
