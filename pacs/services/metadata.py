"""Instance, series and study metadata: computed once per content, cached, with an ETag.

Protocol-neutral: what an instance's metadata looks like is the injected ``encode`` function's
business (DICOMweb gives PS3.18 Annex F JSON); this service reads the headers (never the pixel
data, :mod:`pacs.services.element_tree`), caches the encoded bytes and says when they change.

Caching and ETags:

- A stored file never changes (its blob key is the SHA-256 of its bytes), so an instance's
  encoding is cached by blob key, and a series' by its **ETag**: a hash of the encoding version
  and the blob keys of its instances in order. A new, replaced or removed instance changes the
  ETag, so a cached answer is never stale; the index look-up (one query) is the only work
  left for a conditional request that matches (``If-None-Match`` → 304).
- Series answers are kept in memory (least recently used first out, bounded by bytes) and on
  disk under ``cache_dir`` (written atomically, survive a restart); instance encodings in
  memory only. A study's metadata is the concatenation of its series'.
- The disk cache is not pruned: an entry is a few KB per instance, stale ones are only read
  again if their exact content comes back. ``pacs`` may delete the folder at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacs.services.element_tree import Element
from pacs.services.wado import WadoService
from storage.query import RetrieveItem

log = logging.getLogger(__name__)

InstanceEncoder = Callable[[RetrieveItem, list[Element]], bytes]
"""Encodes one instance's elements (e.g. as DICOM JSON); must be deterministic."""


@dataclass(frozen=True)
class Metadata:
    """Encoded instances of one answer, in order, and the ETag that names their content."""

    etag: str
    parts: tuple[bytes, ...]


class _Lru:
    """A thread-safe least-recently-used map bounded by the total size of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: OrderedDict[str, tuple[bytes, ...]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, ...] | None:
        with self.lock:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
            return value

    def put(self, key: str, value: tuple[bytes, ...]) -> None:
        size = sum(len(v) for v in value)
        if size > self.max_bytes:
            return
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.size -= sum(len(v) for v in old)
            self.entries[key] = value
            self.size += size
            while self.size > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.size -= sum(len(v) for v in dropped)


class MetadataService:
    """Metadata of visible instances, series and studies, cached by content."""

    def __init__(
        self,
        *,
        wado: WadoService,
        encode: InstanceEncoder,
        version: str,
        inline_up_to: int,
        cache_dir: Path | None = None,
        memory_bytes: int = 256 << 20,
    ) -> None:
        self.wado = wado
        self.encode = encode
        self.version = version  # part of every ETag: a new encoding invalidates old answers
        self.inline_up_to = inline_up_to
        self.cache_dir = cache_dir
        self.series_cache = _Lru(memory_bytes // 2)
        self.instance_cache = _Lru(memory_bytes // 2)
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    # -- answers ---------------------------------------------------------------------------
    def etag(self, items: Sequence[RetrieveItem]) -> str:
        """Names the metadata of ``items``: equal when (and only when) the content is."""
        return self._etag(item.blob_key for item in items)

    def current_etag(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> str:
        """The ETag of the visible instances named, from one lean index query (the items are
        not built): what answers ``If-None-Match``. :class:`NotFound` when there are none."""
        return self._etag(self.wado.blob_keys(study, series, instance))

    def _etag(self, keys: Iterable[str]) -> str:
        digest = hashlib.sha256(self.version.encode())
        for key in keys:
            digest.update(key.encode("ascii"))
        return digest.hexdigest()[:40]

    def items(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> tuple[RetrieveItem, ...]:
        """The visible instances named (:class:`NotFound` when none), for :meth:`etag`."""
        return self.wado.instances(study, series, instance)

    def metadata(self, items: Sequence[RetrieveItem]) -> Metadata:
        """The encoded metadata of ``items`` (as given by :meth:`items`), series by series."""
        parts: list[bytes] = []
        for group in _by_series(items):
            parts.extend(self._series(group) if len(group) > 1 else self._instances(group))
        return Metadata(self.etag(items), tuple(parts))

    def elements(self, item: RetrieveItem) -> list[Element]:
        """The instance's element tree (large values located, not read)."""
        with self.wado.header(item, inline_up_to=self.inline_up_to) as (_, elements):
            return elements

    # -- caching ---------------------------------------------------------------------------
    def _series(self, items: Sequence[RetrieveItem]) -> tuple[bytes, ...]:
        key = self.etag(items)
        cached = self.series_cache.get(key)
        if cached is not None:
            return cached
        parts = self._read_disk(key, len(items))
        if parts is None:
            parts = self._instances(items)
            self._write_disk(key, parts)
        self.series_cache.put(key, parts)
        return parts

    def _instances(self, items: Sequence[RetrieveItem]) -> tuple[bytes, ...]:
        parts = []
        for item in items:
            key = f"{self.version}/{item.blob_key}"
            cached = self.instance_cache.get(key)
            if cached is None:
                cached = (self.encode(item, self.elements(item)),)
                self.instance_cache.put(key, cached)
            parts.append(cached[0])
        return tuple(parts)

    def _disk_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.parts"

    def _read_disk(self, key: str, count: int) -> tuple[bytes, ...] | None:
        """Parts stored as a line of lengths, then the parts back to back."""
        path = self._disk_path(key)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        head, _, body = data.partition(b"\n")
        try:
            lengths = [int(n) for n in head.split()]
        except ValueError:
            return None
        if len(lengths) != count or sum(lengths) != len(body):
            log.warning("ignoring a damaged metadata cache entry %s", path.name)
            return None
        parts, position = [], 0
        for length in lengths:
            parts.append(body[position : position + length])
            position += length
        return tuple(parts)

    def _write_disk(self, key: str, parts: tuple[bytes, ...]) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        temporary = path.with_name(f".{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as out:
                out.write(" ".join(str(len(p)) for p in parts).encode("ascii") + b"\n")
                for part in parts:
                    out.write(part)
            os.replace(temporary, path)
        except OSError as error:  # a cache: answering matters more than remembering
            log.warning("cannot write the metadata cache entry %s: %s", path.name, error)
            temporary.unlink(missing_ok=True)


def _by_series(items: Sequence[RetrieveItem]) -> Iterator[list[RetrieveItem]]:
    """Consecutive runs of the same series (the index orders instances by series)."""
    group: list[RetrieveItem] = []
    for item in items:
        if group and item.series_instance_uid != group[-1].series_instance_uid:
            yield group
            group = []
        group.append(item)
    if group:
        yield group
