"""S3-compatible object storage as the blob store (``--blob-store s3://BUCKET/PREFIX``).

A blob is the object ``PREFIX/ab/<sha256>`` (the file store's layout under ``objects/``, so
``aws s3 sync DATA_DIR/objects s3://BUCKET/PREFIX`` moves an archive over). Staging is local:
this process's folder under ``DATA_DIR/tmp`` (:mod:`storage.staging`), on the file system the
DIMSE receive path writes to. :meth:`S3Store.place` PUTs the staged file and returns once S3
answered: an object store's PUT is durable when it succeeds, so there is no sync to wait for,
and the caller commits the index row only after the object exists (never a row without its
object). The PUT is conditional (``If-None-Match: *``): an object already there (the same
bytes: the key is their hash, and a PUT is atomic) is not written again, and ``created`` is
exact even when two servers store the same bytes at once.

Reads are ranged GETs: :meth:`S3Store.open` gives a seekable reader whose buffer fills one
range at a time, :meth:`S3Store.read_chunks` streams a blob range by range, and
:meth:`S3Store.as_file` copies one into the staging folder for a sender that needs a file
(removed when the send is over).

Endpoint, region and credentials come from the environment the standard AWS way (boto3):
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance or pod role, and retries by
``AWS_RETRY_MODE`` and ``AWS_MAX_ATTEMPTS``. Every failure to reach the store, or a refusal,
is :class:`BlobStoreUnavailable`; its message says what failed, never the endpoint.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from storage.blob_store import (
    BlobInfo,
    BlobNotFound,
    BlobStoreUnavailable,
    CommittedBlob,
    StagedBlob,
    is_key,
)
from storage.staging import Staging

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
RANGE = 8 << 20  # bytes per ranged GET of a stream
READ_BUFFER = 1 << 20  # bytes per ranged GET of a seekable reader's buffer
MULTIPART_OVER = 256 << 20  # bytes: larger blobs are uploaded in parts (one PUT takes 5 GB)
PART = 64 << 20  # bytes per part (S3 allows 10,000: 640 GB)
_MISSING = {"404", "NoSuchKey", "NotFound"}
_EXISTS = {"412", "PreconditionFailed"}
_CONFLICT = {"409", "ConditionalRequestConflict", "OperationAborted"}
_ATTEMPTS = 3  # of a conditional PUT that meets another one under way for the same key

T = TypeVar("T")


class S3Store:
    """Blobs as objects of ``bucket`` under ``prefix``; staged in ``staging``."""

    def __init__(
        self, *, bucket: str, prefix: str, staging: Staging, max_connections: int = 64,
        range_size: int = RANGE, multipart_over: int = MULTIPART_OVER, part_size: int = PART,
    ) -> None:
        """``prefix``: empty or ending in ``/``; sizes in bytes: of a ranged GET of a stream,
        the size over which a blob is uploaded in parts, and of a part."""
        self.bucket = bucket
        self.prefix = prefix
        self.staging = staging
        self.range_size = range_size
        self.multipart_over = multipart_over
        self.part_size = part_size
        # timeouts and pool size only: the endpoint, credentials and retries are the
        # environment's (a Config value given here would override the standard variables)
        config = Config(max_pool_connections=max_connections, connect_timeout=10,
                        read_timeout=60)
        try:
            self._s3: Any = boto3.session.Session().client("s3", config=config)
        except (BotoCoreError, ValueError) as error:  # a profile, region or endpoint it refuses
            raise BlobStoreUnavailable(f"the AWS settings cannot be used: {error}") from error
        put = self._s3.meta.service_model.operation_model("PutObject").input_shape
        if "IfNoneMatch" not in put.members:  # conditional writes: botocore 1.35.2 and later
            self._s3.close()
            raise BlobStoreUnavailable(f"boto3 {boto3.__version__} cannot make conditional "
                                       "PUTs: pip install 'boto3>=1.36'")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def check(self) -> None:
        """Raise :class:`BlobStoreUnavailable` unless the bucket can be reached (at start,
        so that a wrong name or a missing credential is one line, not a failed store)."""
        self._call("reach the bucket", lambda: self._s3.head_bucket(Bucket=self.bucket))

    def close(self) -> None:
        self.staging.close()
        self._s3.close()

    @property
    def sync(self) -> None:
        """None: a placed blob is durable (its PUT succeeded)."""
        return None

    def sync_for(self, path: Path) -> None:
        return None

    # -- writing -------------------------------------------------------------------------
    def place(self, staged: StagedBlob, *, start_sync: bool = True) -> CommittedBlob:
        """PUT the staged blob unless its object exists; returns once S3 has it, and the
        staged file is removed (a reader that opened it before still reads it)."""
        key = self._key(staged.sha256)
        if staged.size > self.multipart_over:
            created = self._put_parts(key, staged)
        else:
            created = self._put(key, staged)
        self.staging.discard(staged)
        return CommittedBlob(staged.info, created=created, durable=_durable)

    def commit(self, staged: StagedBlob) -> CommittedBlob:
        return self.place(staged)

    def _put(self, key: str, staged: StagedBlob) -> bool:
        """One conditional PUT: True when it created the object, False when it was there."""
        for attempt in range(_ATTEMPTS):
            try:
                with _body(staged) as body:
                    self._s3.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentLength=staged.size,
                        ContentType="application/dicom", IfNoneMatch="*",
                    )
                return True
            except ClientError as error:
                code = _code(error)
                if code in _EXISTS:
                    return False
                if code in _CONFLICT and attempt + 1 < _ATTEMPTS:
                    time.sleep(0.1 * (attempt + 1))  # another PUT of the same key under way
                    continue
                raise _unavailable("store a blob", error) from error
            except BotoCoreError as error:
                raise _unavailable("store a blob", error) from error
        raise BlobStoreUnavailable("cannot store a blob: the object store kept a conflict")

    def _put_parts(self, key: str, staged: StagedBlob) -> bool:
        """A multipart upload, completed on condition that no object has the key."""
        try:
            self._head(key)
            return False
        except BlobNotFound:
            pass
        upload = self._call("start an upload", lambda: self._s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType="application/dicom"))["UploadId"]
        try:
            parts = []
            with staged.open() as source:
                number = 1
                while chunk := source.read(self.part_size):
                    etag = self._upload_part(key, upload, number, chunk)
                    parts.append({"ETag": etag, "PartNumber": number})
                    number += 1
            try:
                self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload, IfNoneMatch="*",
                    MultipartUpload={"Parts": parts},
                )
            except ClientError as error:
                if _code(error) in _EXISTS:
                    return False
                raise _unavailable("complete an upload", error) from error
            except BotoCoreError as error:
                raise _unavailable("complete an upload", error) from error
            return True
        except BaseException:
            try:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except (ClientError, BotoCoreError) as error:  # S3's lifecycle rules clean up
                log.warning("could not abort an unfinished upload: %s", error)
            raise

    def _upload_part(self, key: str, upload: str, number: int, chunk: bytes) -> str:
        try:
            answer = self._s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload,
                                          PartNumber=number, Body=chunk)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable("upload a part", error) from error
        return str(answer["ETag"])

    # -- reading -------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        """A seekable, buffered reader: each refill of its buffer is one ranged GET."""
        full = self._key(key)
        size = int(self._head(full)["ContentLength"])
        raw = _RangedReader(lambda start, count: self._range(full, start, count), size, key)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def read_chunks(self, key: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The blob in ``chunk_size`` pieces, read by ranged GETs of :attr:`range_size` bytes,
        each streamed: at most one piece is in memory."""
        full = self._key(key)
        start, size = 0, None
        while size is None or start < size:
            end = start + self.range_size - 1
            answer = self._get(full, f"bytes={start}-{end}")
            if answer is None:  # an empty object has no range
                return
            body = answer["Body"]
            try:
                size = _total(answer.get("ContentRange"), answer["ContentLength"], start)
                for chunk in body.iter_chunks(chunk_size):
                    start += len(chunk)
                    yield chunk
            except BotoCoreError as error:  # the connection went away mid-range
                raise _unavailable("read a blob", error) from error
            finally:
                body.close()
            if start <= end and start < size:
                raise BlobStoreUnavailable("cannot read a blob: a range ended early")

    @contextmanager
    def as_file(self, key: str) -> Iterator[Path]:
        """The blob copied (by ranged GETs) into the staging folder; removed afterwards."""
        path = self.staging.temp_path()
        try:
            with path.open("xb") as out:
                for chunk in self.read_chunks(key):
                    out.write(chunk)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            self._head(self._key(key))
        except BlobNotFound:
            return False
        return True

    def stat(self, key: str) -> BlobInfo:
        """Size and SHA-256 of the object's bytes, read through (for ``pacs check``)."""
        self._head(self._key(key))
        digest, size = hashlib.sha256(), 0
        for chunk in self.read_chunks(key):
            digest.update(chunk)
            size += len(chunk)
        return BlobInfo(key=key, size=size, sha256=digest.hexdigest())

    def age(self, key: str) -> float:
        modified = self._head(self._key(key))["LastModified"]
        return time.time() - float(modified.timestamp())

    def free_bytes(self) -> int:
        """Space on the staging folder's disk: an object store has no reserve to keep, the
        local disk that receives uploads has."""
        return self.staging.free_bytes()

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete a blob", lambda: self._s3.delete_object(Bucket=self.bucket, Key=full))

    def keys(self) -> Iterator[str]:
        """Every key under the prefix (``ab/<sha256>``; anything else there is not a blob)."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    folder, _, name = str(entry["Key"])[len(self.prefix):].partition("/")
                    if is_key(name) and folder == name[:2]:
                        yield name
        except (ClientError, BotoCoreError) as error:
            raise _unavailable("list the blobs", error) from error

    # -- requests ------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        if not is_key(key):
            raise BlobNotFound(key)
        return f"{self.prefix}{key[:2]}/{key}"

    def _head(self, full: str) -> dict[str, Any]:
        try:
            return dict(self._s3.head_object(Bucket=self.bucket, Key=full))
        except ClientError as error:
            if _code(error) in _MISSING:
                raise BlobNotFound(full.rpartition("/")[2]) from error
            raise _unavailable("look up a blob", error) from error
        except BotoCoreError as error:
            raise _unavailable("look up a blob", error) from error

    def _get(self, full: str, byte_range: str) -> dict[str, Any] | None:
        """A ranged GET's answer (its body not read yet); None for a range past the end."""
        try:
            return dict(self._s3.get_object(Bucket=self.bucket, Key=full, Range=byte_range))
        except ClientError as error:
            code = _code(error)
            if code in _MISSING:
                raise BlobNotFound(full.rpartition("/")[2]) from error
            if code in {"416", "InvalidRange"}:
                return None
            raise _unavailable("read a blob", error) from error
        except BotoCoreError as error:
            raise _unavailable("read a blob", error) from error

    def _range(self, full: str, start: int, count: int) -> bytes:
        answer = self._get(full, f"bytes={start}-{start + count - 1}")
        if answer is None:
            return b""
        try:
            return bytes(answer["Body"].read())
        except BotoCoreError as error:
            raise _unavailable("read a blob", error) from error

    def _call(self, what: str, request: Callable[[], T]) -> T:
        try:
            return request()
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(what, error) from error


class _RangedReader(io.RawIOBase):
    """A seekable raw reader of ``size`` bytes whose reads ``fetch(start, count)``."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, name: str) -> None:
        self._fetch = fetch
        self._size = size
        self._position = 0
        # what readers that name their file ask for (pydicom does): the blob's key, never
        # the bucket or the endpoint
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._size - self._position)
        if count <= 0:
            return 0
        data = self._fetch(self._position, count)
        buffer[: len(data)] = data
        self._position += len(data)
        if not data:
            raise BlobStoreUnavailable("cannot read a blob: a range came back empty")
        return len(data)

    def readall(self) -> bytes:
        """The rest, in ranges of :data:`RANGE` bytes (not the 8 KiB io's default reads)."""
        parts = []
        while self._position < self._size:
            data = self._fetch(self._position, min(RANGE, self._size - self._position))
            if not data:
                raise BlobStoreUnavailable("cannot read a blob: a range came back empty")
            parts.append(data)
            self._position += len(data)
        return b"".join(parts)


@contextmanager
def _body(staged: StagedBlob) -> Iterator[BinaryIO]:
    """The staged bytes as a PUT's body: from memory when staging kept them, else the file
    (botocore streams it, and rewinds it for a retry)."""
    if staged.content is not None:
        yield io.BytesIO(staged.content)
        return
    with staged.open() as source:
        yield source


def _durable() -> None:
    """A placed object is durable already."""


def _total(content_range: str | None, length: int, start: int) -> int:
    """The object's size from ``bytes a-b/TOTAL``; without one (a server that ignored the
    range and sent it whole), what came from ``start``."""
    if content_range and "/" in content_range:
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return int(total)
    return start + int(length)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _unavailable(what: str, error: Exception) -> BlobStoreUnavailable:
    """The error to raise, its message without the endpoint (logged here with it)."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        reason = f"the object store answered {_code(error) or 'an error'} (HTTP {status})"
    elif isinstance(error, NoCredentialsError):
        reason = "no AWS credentials were found (AWS_ACCESS_KEY_ID, AWS_PROFILE, a role)"
    elif isinstance(error, (BotoConnectionError, HTTPClientError)):
        reason = f"the object store cannot be reached ({type(error).__name__})"
    else:
        reason = f"the request failed ({type(error).__name__})"
    log.warning("cannot %s: %s", what, error)
    return BlobStoreUnavailable(f"cannot {what}: {reason}")
