"""The retrieve service: what C-MOVE and C-GET send, and in which transfer syntax.

Protocol-neutral: it finds the instances under a query (archived studies only), says which
(SOP class, transfer syntax) pairs are stored so a sender can propose exactly those, and
prepares each instance for sending: the stored file unchanged when the peer accepted its
transfer syntax, else a decoded copy (:mod:`pacs.services.transcode`) in a temporary file that
is removed when the send is over. Senders stream from a file (pynetdicom's chunked send), so
nothing is decoded or held in memory for an unchanged instance: the stored file itself, or,
from an object store, a copy fetched by ranged GETs into the staging folder (removed when the
send is over).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pacs.services import metrics
from pacs.services.blob_errors import blob_store_errors
from pacs.services.decoding_limits import DecodeLimits
from pacs.services.errors import CannotTranscode, NotFound, OutOfResources, UnknownPeer
from pacs.services.query import QueryService
from pacs.services.transcode import UNCOMPRESSED, choose_transfer_syntax, transcode
from storage.blob_store import BlobNotFound, BlobStore
from storage.query import Query, RetrieveItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """A remote AE to send to: a C-MOVE destination or routing target."""

    ae_title: str
    host: str
    port: int


class Destinations(Protocol):
    """Where a C-MOVE destination or routing target is found (the AE registry)."""

    def destination(self, ae_title: str) -> Destination | None: ...


class _Fixed:
    def __init__(self, peers: Sequence[Destination]) -> None:
        self.peers = {peer.ae_title: peer for peer in peers}

    def destination(self, ae_title: str) -> Destination | None:
        return self.peers.get(ae_title)


@dataclass(frozen=True)
class Prepared:
    """An instance ready to send: a Part 10 file in ``transfer_syntax``."""

    item: RetrieveItem
    path: Path
    transfer_syntax: str
    transcoded: bool


@dataclass(frozen=True)
class RetrievePlan:
    """The instances to send, in order, and the presentation contexts they need."""

    items: tuple[RetrieveItem, ...]

    def stored_pairs(self) -> dict[str, tuple[str, ...]]:
        """SOP class → stored transfer syntaxes (in first-seen order)."""
        pairs: dict[str, list[str]] = {}
        for item in self.items:
            syntaxes = pairs.setdefault(item.sop_class_uid or "", [])
            if item.transfer_syntax_uid not in syntaxes:
                syntaxes.append(item.transfer_syntax_uid)
        return {sop_class: tuple(ts) for sop_class, ts in pairs.items() if sop_class}

    def proposals(self, limit: int = 128) -> list[tuple[str, tuple[str, ...]]]:
        """Presentation contexts to propose to a C-STORE SCP: one per stored (SOP class,
        transfer syntax) pair, plus one per SOP class with the uncompressed syntaxes to fall
        back on (decoded). Over ``limit`` (pynetdicom's 128), one context per SOP class
        offering its stored syntaxes and the uncompressed ones together."""
        pairs = self.stored_pairs()
        separate: list[tuple[str, tuple[str, ...]]] = []
        for sop_class, syntaxes in pairs.items():
            separate += [(sop_class, (ts,)) for ts in syntaxes if ts not in UNCOMPRESSED]
            separate.append((sop_class, UNCOMPRESSED))
        if len(separate) <= limit:
            return separate
        merged = [
            (sop_class, tuple(dict.fromkeys((*syntaxes, *UNCOMPRESSED))))
            for sop_class, syntaxes in pairs.items()
        ]
        if len(merged) > limit:
            log.warning("%d SOP classes to send: only the first %d can be negotiated",
                        len(merged), limit)
        return merged[:limit]


class AuditSink(Protocol):
    def __call__(self, *, who: str, action: str, outcome: str,
                 study_instance_uid: str | None = None,
                 detail: dict[str, Any] | None = None) -> None: ...


class RetrieveService:
    def __init__(
        self, *, query: QueryService, blobs: BlobStore, peers: Sequence[Destination] = (),
        destinations: Destinations | None = None, audit: AuditSink | None = None,
        limits: DecodeLimits | None = None,
    ) -> None:
        """``destinations`` finds move destinations and routing targets (the AE registry);
        without it, only ``peers`` are known."""
        self.query = query
        self.limits = limits or DecodeLimits.unlimited()
        self.blobs = blobs
        self.destinations = destinations if destinations is not None else _Fixed(peers)
        self.audit = audit

    def destination(self, ae_title: str) -> Destination:
        """The move destination registered as ``ae_title``; :class:`UnknownPeer` otherwise."""
        peer = self.destinations.destination(ae_title.strip())
        if peer is None:
            raise UnknownPeer(f"move destination {ae_title.strip()!r} is not a known peer")
        return peer

    def plan(self, query: Query, *, who: str | None = None, how: str = "") -> RetrievePlan:
        """The instances under ``query``; with ``who``, each study retrieved is audited as
        planned (``how``: WADO-RS ..., a retrieval whose outcome is not known here). C-MOVE and
        C-GET audit their outcome instead (:meth:`finished`, :meth:`refused`)."""
        plan = RetrievePlan(tuple(self.query.instances(query)))
        if who is not None and self.audit is not None:
            counts: dict[str, int] = {}
            for item in plan.items:
                counts[item.study_instance_uid] = counts.get(item.study_instance_uid, 0) + 1
            for study_uid, count in counts.items():
                self._audit(who=who, action="retrieve", outcome=f"{count} instances",
                            study_instance_uid=study_uid,
                            detail={"how": how, "level": query.level.value})
        return plan

    def refused(self, *, who: str, how: str, reason: str, status: str,
                plan: RetrievePlan | None = None) -> None:
        """Audit a retrieval refused before any instance was sent (an unknown move
        destination, a malformed identifier, a destination that cannot be reached)."""
        studies: list[str | None] = [None]
        if plan is not None and plan.items:
            studies = list(dict.fromkeys(item.study_instance_uid for item in plan.items))
        detail = {"how": how, "reason": reason[:200], "status": status, "instances": 0,
                  "planned": len(plan.items) if plan else 0}
        for study_uid in studies:
            self._audit(who=who, action="retrieve", outcome="refused",
                        study_instance_uid=study_uid, detail=detail)

    def finished(self, plan: RetrievePlan, *, who: str, how: str, attempted: int,
                 failed: Collection[str], warning: Collection[str], status: str) -> None:
        """Audit the outcome of a retrieval, one event per study: the sub-operations that
        completed, failed, ended with a warning, or were not attempted (a cancel), counted
        from the first ``attempted`` items of ``plan`` and the UIDs that failed or warned
        (an instance counted failed after ``attempted``: the destination went away)."""
        failed, warning = set(failed), set(warning)
        counts: dict[str, dict[str, int]] = {}
        for number, item in enumerate(plan.items):
            study = counts.setdefault(item.study_instance_uid, {
                "completed": 0, "failed": 0, "warning": 0, "not_attempted": 0})
            if item.sop_instance_uid in failed:
                study["failed"] += 1
            elif number >= attempted:
                study["not_attempted"] += 1
            elif item.sop_instance_uid in warning:
                study["warning"] += 1
            else:
                study["completed"] += 1
        for study_uid, study in counts.items():
            outcome = (f"{study['completed']} completed, {study['failed']} failed, "
                       f"{study['warning']} warning")
            if study["not_attempted"]:
                outcome += f", {study['not_attempted']} not attempted"
            self._audit(who=who, action="retrieve", outcome=outcome,
                        study_instance_uid=study_uid,
                        detail={"how": how, "status": status, **study})
        if not counts:
            self._audit(who=who, action="retrieve", outcome="0 instances", detail={
                "how": how, "status": status, "completed": 0, "failed": 0, "warning": 0})

    def _audit(self, **event: Any) -> None:
        """An audit event; an index that cannot take it is logged, not the peer's problem
        (the retrieval itself is over)."""
        if self.audit is None:
            return
        try:
            self.audit(**event)
        except OutOfResources as error:
            log.error("audit of a retrieval lost: %s", error)

    @contextmanager
    def prepared(self, item: RetrieveItem, accepted: Collection[str]) -> Iterator[Prepared]:
        """``item`` as a file in a transfer syntax from ``accepted``.

        Raises :class:`CannotTranscode` when no accepted syntax fits (or decoding fails, or
        would exceed the decoding limit: :class:`DecodeTooLarge`), :class:`DecoderBusy` when
        no decoding slot freed up in time and :class:`NotFound` when the stored file is gone.
        """
        target = choose_transfer_syntax(item.transfer_syntax_uid, accepted)
        if target is None:
            raise CannotTranscode(
                f"SOP Instance {item.sop_instance_uid}: the peer accepted neither its stored "
                f"transfer syntax {item.transfer_syntax_uid} nor an uncompressed one"
            )
        missing = f"SOP Instance {item.sop_instance_uid}: stored file missing"
        if target == item.transfer_syntax_uid:
            with ExitStack() as stack:
                try:
                    with blob_store_errors():
                        stored = stack.enter_context(self.blobs.as_file(item.blob_key))
                except BlobNotFound as error:
                    metrics.blob_error("read")
                    raise NotFound(missing) from error
                yield Prepared(item, stored, target, transcoded=False)
            return
        try:
            with blob_store_errors(), self.blobs.open(item.blob_key) as source:
                data = source.read()
        except BlobNotFound as error:
            metrics.blob_error("read")
            raise NotFound(missing) from error
        converted = transcode(data, target, self.limits)
        del data
        path = self.blobs.staging.temp_path()
        try:
            with open(path, "xb") as out:
                out.write(converted)
            del converted
            yield Prepared(item, path, target, transcoded=True)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
