"""Where pynetdicom's chunked receive writes a C-STORE data set, made cheap.

For each C-STORE request pynetdicom's reactor thread creates a ``NamedTemporaryFile`` and
writes a File Meta Information built with pydicom, before the data set's first byte: about
0.5 ms on the critical path of every store here (creating a file on ext4 is most of it). This
module gives it files created ahead of time by a background thread, in the store's temporary
folder (so a store is still a rename), and writes the File Meta Information from bytes.

Installed by the fast transport (``fast._receive_files``);
``tests/dimse/test_receive_files.py`` checks the File Meta Information against pydicom's.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import IO, Any

from storage.sync import start_writeback

log = logging.getLogger(__name__)

READY = 32  # files kept ready per process
# a large data set's pages are sent to disk as it arrives, this many bytes at a time, so that
# the sync that makes it durable mostly finds them written (+12% for 0.5 MB CT, one association)
WRITEBACK_EVERY = 256 * 1024


class ReceiveFile:
    """The part of ``NamedTemporaryFile`` pynetdicom's chunked receive uses; it also hashes
    what it writes, so the store need not read the file again to find its content address.

    A write that fails (the disk is full, say) must not raise: it would surface inside
    pynetdicom's state machine, which aborts the association without a C-STORE response.
    The error is kept instead (:attr:`error`, for the store to answer 0xA700), the file is
    emptied to give its space back, and the rest of the data set is read and dropped. The
    file is unbuffered for that reason (no buffer left to flush at close) and because the
    data set arrives in large fragments anyway."""

    def __init__(self, path: Path, error: OSError | None = None) -> None:
        self.name = str(path)
        self.error = error
        self.file: IO[bytes] | None = (
            open(path, "r+b", buffering=0) if error is None else None  # noqa: SIM115
        )
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._flushed = 0  # bytes whose writeback has been started

    def write(self, data: bytes) -> int:
        if self.file is None or self.error is not None:
            return len(data)
        self.sha256.update(data)
        self.size += len(data)
        try:
            written = self.file.write(data)
            while written < len(data):  # (a regular file writes short only when nearly full)
                written += self.file.write(memoryview(data)[written:])
            if self.size - self._flushed >= WRITEBACK_EVERY:
                start_writeback(self.file.fileno(), self._flushed, self.size - self._flushed)
                self._flushed = self.size
        except OSError as error:
            self._failed(error)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered (pynetdicom calls it after each fragment)."""

    def _failed(self, error: OSError) -> None:
        log.warning("cannot write a received data set: %s", error)
        self.error = error
        if self.file is not None:
            try:
                os.ftruncate(self.file.fileno(), 0)
            except OSError:
                pass

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def failure_comment(error: OSError) -> str:
    """What a peer is told of a failed receive (an Error Comment is 64 characters at most;
    no path: ``str(error)`` may carry one)."""
    if error.errno == errno.ENOSPC:
        return "no space left on device while receiving the data set"
    if error.errno == errno.EDQUOT:
        return "disk quota exceeded while receiving the data set"
    return f"cannot write the received data set ({os.strerror(error.errno or errno.EIO)})"


class ReceiveFiles:
    """A stock of empty files in ``folder``; ``__call__`` has NamedTemporaryFile's signature."""

    def __init__(self, folder: Path, ready: int = READY) -> None:
        self.folder = folder
        self.ready = ready
        self._stock: deque[Path] = deque()
        self._open: dict[str, ReceiveFile] = {}  # by name, until the store takes the digest
        self._owners: dict[str, object] = {}  # by name: the association it was made for
        self._wanted = threading.Event()
        self._wanted.set()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._keep_stocked, name="receive-files", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Make no more files (before the temporary folder is swept at shutdown)."""
        self._stopped = True
        self._wanted.set()
        self._thread.join(5)

    def __call__(self, *args: Any, **kwargs: Any) -> ReceiveFile:
        try:
            path = self._stock.popleft()
        except IndexError:
            path = None
        if len(self._stock) <= self.ready // 2:  # refill in bursts: fewer wake-ups
            self._wanted.set()
        try:
            try:
                opened = ReceiveFile(path or self._create())  # stock ran out: create now
            except FileNotFoundError:  # swept meanwhile (shutdown, restart)
                opened = ReceiveFile(self._create())
        except OSError as error:  # no file at all (disk full): the receive fails, not pynetdicom
            log.warning("cannot create a file for a received data set: %s", error)
            opened = ReceiveFile(self.folder / f"{uuid.uuid4().hex}.rcv", error)
        self._open[opened.name] = opened
        return opened

    def own(self, handle: ReceiveFile, owner: object) -> None:
        """``handle`` was made for ``owner`` (an association): :meth:`release` removes it if
        nothing took it by then."""
        self._owners[handle.name] = owner

    def release(self, owner: object) -> None:
        """Close and remove the files made for ``owner`` that no store took: the data set of
        a C-STORE answered by something else (a C-STORE on a Verification context) or cut
        short, once its association has closed."""
        for name in [name for name, held in list(self._owners.items()) if held is owner]:
            self._owners.pop(name, None)
            opened = self._open.pop(name, None)
            if opened is not None:
                opened.close()
                Path(name).unlink(missing_ok=True)

    def written(self, path: Path) -> tuple[str, int] | None:
        """(SHA-256, size) of everything written to ``path`` (once; None if unknown)."""
        self._owners.pop(str(path), None)
        opened = self._open.pop(str(path), None)
        if opened is None:
            return None
        return opened.sha256.hexdigest(), opened.size

    def failure(self, path: Path) -> str | None:
        """Why the data set received into ``path`` could not be written (then forgotten), or
        None when it was written whole."""
        opened = self._open.get(str(path))
        if opened is None or opened.error is None:
            return None
        del self._open[str(path)]
        self._owners.pop(str(path), None)
        return failure_comment(opened.error)

    def forget(self, path: Path) -> None:
        self._open.pop(str(path), None)
        self._owners.pop(str(path), None)

    def _create(self) -> Path:
        path = self.folder / f"{uuid.uuid4().hex}.rcv"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return path

    def _keep_stocked(self) -> None:
        while not self._stopped:
            self._wanted.wait()
            self._wanted.clear()
            while len(self._stock) < self.ready and not self._stopped:
                try:
                    self._stock.append(self._create())
                except OSError as error:  # disk full, folder gone: pynetdicom's path then
                    log.debug("cannot create receive files: %s", error)
                    break


class FileMeta:
    """The values pynetdicom's ``create_file_meta`` takes, for :func:`write_file_meta`."""

    def __init__(self, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                 implementation_uid: str, implementation_version: str) -> None:
        self.elements = (
            (0x0001, "OB", b"\x00\x01"),
            (0x0002, "UI", _ui(sop_class_uid)),
            (0x0003, "UI", _ui(sop_instance_uid)),
            (0x0010, "UI", _ui(transfer_syntax)),
            (0x0012, "UI", _ui(implementation_uid)),
            (0x0013, "SH", _sh(implementation_version)),
        )


def file_meta(**kwargs: Any) -> FileMeta:
    """Stands in for ``pynetdicom.dsutils.create_file_meta`` (same keywords)."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    kwargs.setdefault("implementation_uid", PYNETDICOM_IMPLEMENTATION_UID)
    kwargs.setdefault("implementation_version", PYNETDICOM_IMPLEMENTATION_VERSION)
    return FileMeta(**{key: str(value) for key, value in kwargs.items()})


def write_file_meta(fp: Any, meta: FileMeta, **_: Any) -> None:
    """Group 0002 with its group length, Explicit VR Little Endian (PS3.10 7.1)."""
    body = b"".join(_explicit(element, vr, value) for element, vr, value in meta.elements)
    fp.write(_explicit(0x0000, "UL", struct.pack("<I", len(body))) + body)


def _explicit(element: int, vr: str, value: bytes) -> bytes:
    head = struct.pack("<HH", 0x0002, element) + vr.encode("ascii")
    if vr == "OB":
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _ui(uid: str) -> bytes:
    data = uid.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _sh(text: str) -> bytes:
    data = text.encode("ascii")
    return data + b" " if len(data) % 2 else data
