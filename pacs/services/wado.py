"""Instances for a web retrieve (WADO-RS, WADO-URI): which ones, in which transfer syntax, and
their bytes as a stream of chunks.

Protocol-neutral: a front end names a study, series or instance and the transfer syntaxes a
client accepts, in order of preference; ``"*"`` means "as stored". Only archived studies are
visible (the index returns no other), so an invisible one is :class:`NotFound` like an unknown
one. Stored files are streamed unchanged in 1 MiB chunks; an instance to convert is decoded
by :meth:`RetrieveService.prepared` (one instance in memory at a time) into a temporary file
that is removed when its chunks have been sent or the client went away.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pacs.services import metrics
from pacs.services.blob_errors import blob_store_errors
from pacs.services.element_tree import Element, Readable, Unreadable, readable, walk
from pacs.services.errors import CannotTranscode, DecodeTooLarge, InvalidInstance, NotFound
from pacs.services.retrieve import RetrieveService
from pacs.services.transcode import UNCOMPRESSED
from storage.attributes import Level
from storage.blob_store import BlobNotFound
from storage.query import Query, RetrieveItem, condition

AS_STORED = "*"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InstanceFile:
    """One instance to send: a Part 10 file in ``transfer_syntax``; ``size`` when sent as stored."""

    item: RetrieveItem
    transfer_syntax: str
    size: int | None
    service: RetrieveService

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes; opened only when iterated, closed (or removed) when done."""
        if self.transfer_syntax == self.item.transfer_syntax_uid:
            try:
                with blob_store_errors():
                    yield from self.service.blobs.read_chunks(self.item.blob_key, _CHUNK)
            except BlobNotFound as error:
                metrics.blob_error("read")
                missing = f"SOP Instance {self.item.sop_instance_uid}: stored file missing"
                raise NotFound(missing) from error
            return
        with self.service.prepared(self.item, (self.transfer_syntax,)) as prepared, open(
            prepared.path, "rb"
        ) as source:
            yield from iter(lambda: source.read(_CHUNK), b"")


def target_syntax(stored: str, preferences: Sequence[str]) -> str | None:
    """The first of ``preferences`` an instance stored in ``stored`` can be sent in.

    ``*`` and the stored syntax mean unchanged; an uncompressed syntax means decoded to it;
    any other (compressing, or changing one compression for another) is not possible here.
    """
    for wanted in preferences:
        if wanted in (AS_STORED, stored):
            return stored
        if wanted in UNCOMPRESSED:
            return wanted
    return None


class WadoService:
    """Finds visible instances and gives them as files in an acceptable transfer syntax."""

    def __init__(self, *, retrieve: RetrieveService) -> None:
        self.retrieve = retrieve

    def instances(
        self, study: str, series: str | None = None, instance: str | None = None,
        *, who: str | None = None, how: str = "WADO-RS",
    ) -> tuple[RetrieveItem, ...]:
        """The instances of a study, series or one instance, in series/InstanceNumber order;
        :class:`NotFound` when there are none (unknown, not archived, or in another study).
        With ``who``, the retrieval is audited."""
        query = _query(study, series, instance)
        items = self.retrieve.plan(query, who=who, how=how).items
        if not items:
            raise NotFound(f"no such {query.level.value.lower()}: {instance or series or study}")
        return items

    def blob_keys(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[str]:
        """The blob keys of :meth:`instances` (same order), without building the items:
        what an ETag check needs. :class:`NotFound` when there are none."""
        keys = self.retrieve.query.blob_keys(_query(study, series, instance))
        if not keys:
            raise NotFound(f"no such object: {instance or series or study}")
        return keys

    def instance(self, study: str, series: str, instance: str) -> RetrieveItem:
        return self.instances(study, series, instance)[0]

    def files(
        self, items: Sequence[RetrieveItem], preferences: Sequence[str]
    ) -> list[InstanceFile]:
        """Each instance in the first acceptable transfer syntax of ``preferences``.

        Raises :class:`CannotTranscode` before anything is sent when an instance cannot be
        given in any of them (e.g. JPEG 2000 asked of a JPEG-LS instance).
        """
        files = []
        for item in items:
            target = target_syntax(item.transfer_syntax_uid, preferences)
            if target is None:
                raise CannotTranscode(
                    f"SOP Instance {item.sop_instance_uid} is stored in "
                    f"{item.transfer_syntax_uid}: it can be sent as stored or decoded to an "
                    f"uncompressed transfer syntax, not in {', '.join(preferences)}"
                )
            size = item.blob_size if target == item.transfer_syntax_uid else None
            files.append(InstanceFile(item, target, size, self.retrieve))
        return files

    @contextmanager
    def header(
        self, item: RetrieveItem, *, inline_up_to: int = 1024
    ) -> Iterator[tuple[Readable, list[Element]]]:
        """The open stored file (as little endian data) and its element tree; binary values
        over ``inline_up_to`` bytes and Pixel Data are located, not read."""
        try:
            with blob_store_errors():
                file = self.retrieve.blobs.open(item.blob_key)
        except BlobNotFound as error:
            metrics.blob_error("read")
            raise NotFound(f"SOP Instance {item.sop_instance_uid}: stored file missing") from error
        with blob_store_errors(), file:  # (reads of an object store's file may fail too)
            try:
                source = readable(file, item.blob_size, item.transfer_syntax_uid,
                                  self.retrieve.limits)
                elements = walk(source, inline_up_to=inline_up_to)
            except DecodeTooLarge as error:
                raise DecodeTooLarge(f"SOP Instance {item.sop_instance_uid}: {error}") from error
            except (Unreadable, CannotTranscode) as error:
                raise InvalidInstance(
                    f"SOP Instance {item.sop_instance_uid}: cannot read the stored file: {error}"
                ) from error
            yield source, elements


def _query(study: str, series: str | None, instance: str | None) -> Query:
    conditions = [condition("StudyInstanceUID", study)]
    level = Level.STUDY
    if series is not None:
        conditions.append(condition("SeriesInstanceUID", series))
        level = Level.SERIES
    if instance is not None:
        conditions.append(condition("SOPInstanceUID", instance))
        level = Level.IMAGE
    if any(c is None for c in conditions):
        raise NotFound("an empty UID names nothing")
    return Query(level=level, conditions=tuple(c for c in conditions if c is not None))
