"""The staging folder of one server process: where a blob's bytes are written before they are
placed under their key (renamed into the file store, or PUT to an object store).

Several servers may share a data folder (replicas over one file store, or over one object
store with a shared ``DATA_DIR``). Each process therefore stages in a folder of its own,
``tmp/<node>`` (the server's node id, by default ``<host>-<pid>``; with a suffix ``.1``,
``.2``, ... when a live process holds that name, as the DIMSE workers of a named node do), and
holds an exclusive ``flock`` on the ``.lock`` file in it for as long as it runs. A sweep
removes what is staged in its own folder and in every folder whose lock is free: those of
processes that died (the kernel drops a dead process's locks), never the in-flight uploads of
a live one. The folder is on the file system of what receives the upload, so a receiver
writing into it (the DIMSE receive path) hands its file over with a rename.

Files directly in ``tmp/`` are of the earlier layout (one folder for every process): a sweep
removes them too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import tempfile
import uuid
import weakref
from collections.abc import Iterable
from pathlib import Path

from storage.blob_store import IN_MEMORY_UP_TO, StagedBlob

_CHUNK = 1 << 20
LOCK = ".lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 64
_MAX_CLAIMS = 1000  # names tried before giving up (each a live process's folder)


class Staging:
    """``root/<name>``, claimed by this process until :meth:`close`."""

    def __init__(self, root: Path, name: str | None = None) -> None:
        """``root``: the folder of every process's staging folder (``DATA_DIR/tmp``);
        ``name``: this server's node id (default ``<host>-<pid>``)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.folder, self._lock = _claim(root, name or f"{socket.gethostname()}-{os.getpid()}")
        self._resolved = self.folder.resolve()
        # a store dropped without close() still releases its folder's lock
        self._release = weakref.finalize(self, os.close, self._lock)

    # -- writing -------------------------------------------------------------------------
    def stage_file(
        self, path: Path, *, move: bool, digest: tuple[str, int] | None = None
    ) -> StagedBlob:
        """Stage an existing file: moved when it is already in :attr:`folder`, copied
        otherwise. ``digest`` (SHA-256, size), when the writer of a file here hashed it."""
        here = path.parent == self.folder or path.parent.resolve() == self._resolved
        if move and here and digest is not None and path.stat().st_size == digest[1]:
            return StagedBlob(path=path, size=digest[1], sha256=digest[0])
        return self._stage_existing(path, move=move and here)

    def _stage_existing(self, path: Path, *, move: bool) -> StagedBlob:
        if move:
            if path.stat().st_size <= IN_MEMORY_UP_TO:  # read once: hash and parse the same bytes
                content = path.read_bytes()
                digest = hashlib.sha256(content).hexdigest()
                return StagedBlob(path=path, size=len(content), sha256=digest, content=content)
            digest, size = hash_file(path)
            return StagedBlob(path=path, size=size, sha256=digest)
        with path.open("rb") as source:
            return self.stage_stream(iter(lambda: source.read(_CHUNK), b""))

    def stage_bytes(self, data: bytes) -> StagedBlob:
        staged = self.stage_stream([data])
        staged.content = data
        return staged

    def stage_stream(self, chunks: Iterable[bytes]) -> StagedBlob:
        """Write chunks to a new file here; removed again if the iterator raises."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=".part")
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
        """A fresh name here (for writers that create the file themselves)."""
        return self.folder / f"{uuid.uuid4().hex}.part"

    def discard(self, staged: StagedBlob) -> None:
        """Remove what is left of ``staged`` here. (An unlink of a name that is not there
        still takes the folder's lock, which concurrent stores contend for.)"""
        if not staged.gone:
            staged.path.unlink(missing_ok=True)
            staged.gone = True

    def free_bytes(self) -> int:
        """Space left for unprivileged writers on the staging folder's file system."""
        stats = os.statvfs(self.folder)
        return stats.f_bavail * stats.f_frsize

    # -- sweeping ------------------------------------------------------------------------
    def sweep(self) -> int:
        """Remove the files staged in this process's folder, in the folders of processes
        that are gone (their lock is free) and directly in :attr:`root`; returns how many.
        The folders of live processes are left alone: their uploads are in flight."""
        removed = _empty(self.folder)
        for entry in self.root.iterdir():
            if entry == self.folder:
                continue
            if entry.is_dir() and not entry.is_symlink():
                removed += _sweep_if_free(entry)
            elif entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def staged(self) -> list[Path]:
        """Files staged now, by any process (``pacs check`` reports them)."""
        found = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                found += _staged(entry)
            elif entry.is_file():
                found.append(entry)
        return found

    def close(self) -> None:
        """Remove this process's folder, what is left in it included, and release it."""
        if not self._release.alive:
            return
        _empty(self.folder)
        (self.folder / LOCK).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # a subfolder someone made: left for a later sweep
        self._release()


def _claim(root: Path, name: str) -> tuple[Path, int]:
    """A folder under ``root`` whose lock this process holds: ``name``, or with a suffix when
    a live process holds that one (another store of this process, another process of the
    node, or one with the same host name and PID in another container). What a dead holder
    left in it is removed."""
    base = _UNSAFE.sub("_", name)[:_MAX_NAME]
    for number in range(_MAX_CLAIMS):
        folder = root / (base if number == 0 else f"{base}.{number}")
        lock = _lock(folder, create=True)
        if lock is not None:
            _empty(folder)
            return folder, lock
    raise OSError(f"no staging folder could be claimed in {root}")


def _lock(folder: Path, *, create: bool) -> int | None:
    """The descriptor of ``folder/.lock``, exclusively locked; None when a live process holds
    it. Made (with the folder) when ``create``; None without it when there is no folder."""
    while True:
        if create:
            folder.mkdir(exist_ok=True)
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # a sweeper removed the folder meanwhile
            if create:
                continue
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:  # still the lock file of the folder (a sweeper may have removed it meanwhile)
            same = os.stat(folder / LOCK).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        if not create:
            return None


def _sweep_if_free(folder: Path) -> int:
    """Empty and remove the folder of a process that is gone; 0 when its holder lives."""
    lock = _lock(folder, create=False)
    if lock is None:
        return 0
    try:
        removed = _empty(folder)
        (folder / LOCK).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass
        return removed
    finally:
        os.close(lock)


def _staged(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return []
    return [path for path in entries if path.name != LOCK and path.is_file()]


def _empty(folder: Path) -> int:
    removed = 0
    for path in _staged(folder):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def hash_file(path: Path) -> tuple[str, int]:
    """(SHA-256, size) of a file."""
    with path.open("rb") as source:
        digest = hashlib.file_digest(source, "sha256")
        return digest.hexdigest(), source.tell()
