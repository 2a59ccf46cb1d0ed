"""The blob store interface: bytes under content-derived keys, knowing nothing of DICOM.

A blob's key is the SHA-256 of its bytes (64 lowercase hex digits), never a UID or any other
string a peer sent. A store is written in two steps: the bytes are *staged* in a local
temporary folder of this server (:class:`storage.staging.Staging`), then *placed* under their
key. A caller reports success only once the blob is durable and its index row committed.

Two backends implement :class:`BlobStore`: the file system (:class:`storage.blobs.FileStore`:
a rename, made durable by a sync of the store's file system that concurrent stores share) and
S3-compatible object storage (:class:`storage.s3.S3Store`: a PUT, durable when it returns).
Reads stream: :meth:`BlobStore.open` gives a seekable file whose reads an object store answers
with ranged GETs, so no blob is ever held in memory whole unless the caller reads it whole.

Errors::

    BlobNotFound            no blob with this key (LookupError)
    BlobStoreUnavailable    the store cannot be reached or refused a request (OSError): the
                            message names the problem, never a host or a path
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from storage.staging import Staging
    from storage.sync import SharedSync

IN_MEMORY_UP_TO = 16 << 20  # bytes: smaller staged blobs are parsed from memory
_HEX = frozenset("0123456789abcdef")
_BUCKET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


class BlobNotFound(LookupError):
    """No blob with this key."""


class BlobStoreUnavailable(OSError):
    """The blob store cannot be reached, or refused a request it should have taken (an object
    store that is down, a missing bucket, denied credentials). Nothing was stored or read."""


@dataclass(frozen=True)
class BlobInfo:
    """What the index records of a blob."""

    key: str
    size: int
    sha256: str


@dataclass
class StagedBlob:
    """Bytes written to the staging folder, not yet durable nor addressable."""

    path: Path
    size: int
    sha256: str
    content: bytes | None = None  # the bytes, when staging already had them in memory
    gone: bool = False  # moved into place or removed: nothing left in the staging folder

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
        """Returns once the blob is durable (raises the sync's OSError if it failed)."""
        self.durable()


class BlobStore(Protocol):
    """What the services need of a blob store (both backends; thread-safe)."""

    staging: Staging
    """This server's own staging folder: where bytes are written before they are placed."""

    @property
    def sync(self) -> SharedSync | None:
        """The sync that makes placed blobs durable, shared by everything that waits for it;
        None when a placed blob is durable already (an object store's PUT)."""

    def sync_for(self, path: Path) -> SharedSync | None:
        """:attr:`sync` when it also makes ``path`` durable (one file system), else None."""

    def describe(self) -> str:
        """Where the blobs are, for the log (no credentials)."""

    def check(self) -> None:
        """Raise :class:`BlobStoreUnavailable` unless the store answers (an object store's
        bucket reachable; nothing to ask of files, which the staging folder's writes try)."""

    def place(self, staged: StagedBlob, *, start_sync: bool = True) -> CommittedBlob:
        """Make a staged blob addressable under its key; the staged file is gone once this
        returns (a stream opened on it before still reads). ``created``: this call created
        the blob (on a failure later the caller deletes it again); false when it was there.
        On an error the staged file is left for the caller to discard."""

    def commit(self, staged: StagedBlob) -> CommittedBlob:
        """:meth:`place`, returning once the blob is durable."""

    def open(self, key: str) -> BinaryIO:
        """A seekable reader of a committed blob (:class:`BlobNotFound` if there is none)."""

    def read_chunks(self, key: str, chunk_size: int = ...) -> Iterator[bytes]:
        """Stream a blob without holding it in memory."""

    def as_file(self, key: str) -> AbstractContextManager[Path]:
        """A local file with the blob's bytes while the block runs, for senders that stream
        from a file (pynetdicom's chunked C-STORE send). Read-only: never write to or move
        it."""

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> BlobInfo:
        """Size and a freshly computed SHA-256 of a committed blob (consistency checks)."""

    def age(self, key: str) -> float:
        """Seconds since the blob was written."""

    def free_bytes(self) -> int:
        """Space left for writing on the local disk this store writes to (the staging
        folder's; for files, the objects' too)."""

    def delete(self, key: str) -> None:
        """Remove a blob; nothing happens when there is none."""

    def keys(self) -> Iterator[str]:
        """Every committed key (for ``pacs check`` and the orphan sweep)."""

    def close(self) -> None:
        """Release the staging folder (removed with what is left in it) and connections."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in ``/`` or empty) of ``s3://BUCKET[/PREFIX]``."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not s3://BUCKET/PREFIX")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET:
        raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    if len(prefix) > 512 or not prefix.isprintable():
        raise ValueError("the key prefix is longer than 512 characters or not printable")
    return bucket, f"{prefix}/" if prefix else ""


def is_key(key: str) -> bool:
    return len(key) == 64 and set(key) <= _HEX
