"""The query service: one Query model for C-FIND, QIDO-RS, C-MOVE and C-GET.

Results are capped (``max_results``) and streamed: rows are read in short units of work of
at most ``batch_size`` rows, so neither memory nor a read transaction grows with the result.

A query made on behalf of someone (``who``: a C-FIND's calling AE and address, a QIDO-RS
client) is audited when it ends, with its level, keys and number of matches, or as refused
with the reason (:class:`pacs.services.audit.AuditTrail`, written in the background).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pacs.services.audit import AuditTrail
from pacs.services.errors import InvalidQuery, OutOfResources, PacsError
from pacs.services.workflow.states import VISIBLE_TO_VIEWERS
from storage.attributes import Level
from storage.index import Index, IndexUnavailable, Repository
from storage.query import InvalidQueryValue, Query, RetrieveItem

__all__ = ["QueryService", "RetrieveItem", "SearchResult"]

log = logging.getLogger(__name__)

_UNCAPPED = 2**62


@dataclass(frozen=True)
class SearchResult:
    """A whole (capped) result: ``capped`` tells that the server's cap cut it short."""

    rows: list[dict[str, Any]]
    capped: bool


class QueryService:
    """Runs queries against the index, in the studies viewers see (``visible``: the workflow's
    :data:`~pacs.services.workflow.VISIBLE_TO_VIEWERS`, passed into every query)."""

    def __init__(
        self,
        *,
        index: Index,
        max_results: int = 1000,
        batch_size: int = 250,
        capped_levels: frozenset[Level] = frozenset({Level.PATIENT, Level.STUDY}),
        audit: AuditTrail | None = None,
        visible: frozenset[str] = VISIBLE_TO_VIEWERS,
    ) -> None:
        if max_results < 1 or batch_size < 1:
            raise ValueError("max_results and batch_size must be positive")
        self.index = index
        self.max_results = max_results
        self.batch_size = batch_size
        # Only broad searches are capped: a SERIES or IMAGE query names its study, and a
        # viewer asking for the images of a 2,000-slice series needs all of them (the rows
        # are streamed in batches either way, so memory stays bounded).
        self.capped_levels = capped_levels
        self.audit = audit
        self.visible = visible

    def find(self, query: Query, *, who: str | None = None, how: str = "C-FIND"
             ) -> Iterator[dict[str, Any]]:
        """The matches of ``query`` (see ``Repository.find`` for the shape of each dict).

        At most ``min(query.limit, max_results)`` at the capped levels (PATIENT, STUDY); when
        the cap cuts the result short, a WARNING "result capped at N" is logged. The first
        batch is read before this returns, so an invalid query raises :class:`InvalidQuery`
        here, not while iterating. With ``who``, the query is audited once the iteration ends
        (or is abandoned: a C-CANCEL, a peer gone).
        """
        cap = self.max_results if query.level in self.capped_levels else _UNCAPPED
        wanted = cap if query.limit is None else min(query.limit, cap)
        capped = cap != _UNCAPPED and (query.limit is None or query.limit > cap)
        size = min(self.batch_size, wanted + 1)
        try:
            first = self._batch(query, query.offset, size)
        except PacsError as error:
            self._refused(who, how, query, error)
            raise
        rows = self._stream(query, first, size, wanted, capped)
        if who is None or self.audit is None:
            return rows
        return self._audited(rows, query, who, how, wanted if capped else None)

    def _audited(self, rows: Iterator[dict[str, Any]], query: Query, who: str, how: str,
                 cap: int | None) -> Iterator[dict[str, Any]]:
        assert self.audit is not None
        sent, outcome = 0, None
        try:
            for row in rows:
                yield row
                sent += 1
        except GeneratorExit:
            outcome = f"{sent} matches, stopped early"
            raise
        except PacsError as error:
            outcome = f"failed after {sent} matches: {error}"
            raise
        finally:
            self.audit.query(who=who, how=how, query=query, matches=sent, outcome=outcome,
                             capped=outcome is None and sent == cap)

    def refused(self, *, who: str, how: str, reason: str) -> None:
        """Audit a query a front end refused before it became a :class:`Query` (an
        Identifier that cannot be decoded or does not fit the model)."""
        if self.audit is not None:
            self.audit.refused_query(who=who, how=how, reason=reason)

    def _refused(self, who: str | None, how: str, query: Query, error: PacsError) -> None:
        if who is not None and self.audit is not None:
            self.audit.refused_query(who=who, how=how, reason=str(error), query=query)

    def search(self, query: Query, *, capped: bool | None = None, who: str | None = None,
               how: str = "QIDO-RS") -> SearchResult:
        """The matches of ``query`` read at once (QIDO-RS answers with one JSON array).

        ``capped`` says whether ``max_results`` applies (default: at the capped levels); one
        row more than the cap is read to tell whether the cap cut the result short. With
        ``who``, the query is audited.
        """
        try:
            result = self._search(query, capped)
        except PacsError as error:
            self._refused(who, how, query, error)
            raise
        if who is not None and self.audit is not None:
            self.audit.query(who=who, how=how, query=query, matches=len(result.rows),
                             capped=result.capped)
        return result

    def _search(self, query: Query, capped: bool | None) -> SearchResult:
        if capped is None:
            capped = query.level in self.capped_levels
        wanted = query.limit
        if capped and (wanted is None or wanted > self.max_results):
            rows = self._batch(query, query.offset, self.max_results + 1)
            if len(rows) > self.max_results:
                log.warning("result capped at %d", self.max_results)
                return SearchResult(rows[: self.max_results], True)
            return SearchResult(rows, False)
        if wanted is None:
            with self._reading() as repository:
                return SearchResult(list(repository.find(self._scoped(query))), False)
        return SearchResult(self._batch(query, query.offset, wanted), False)

    def _stream(
        self, query: Query, first: list[dict[str, Any]], size: int, wanted: int, capped: bool
    ) -> Iterator[dict[str, Any]]:
        batch, sent = first, 0
        while True:
            for row in batch:
                if sent == wanted:
                    if capped:
                        log.warning("result capped at %d", self.max_results)
                    return
                sent += 1
                yield row
            if len(batch) < size:
                return
            size = min(self.batch_size, wanted + 1 - sent)
            batch = self._batch(query, query.offset + sent, size)

    def _batch(self, query: Query, offset: int, size: int) -> list[dict[str, Any]]:
        page = dataclasses.replace(query, limit=size, offset=offset,
                                   visible_states=self.visible)
        with self._reading() as repository:
            return list(repository.find(page))

    def blob_keys(self, query: Query) -> list[str]:
        """The blob keys of :meth:`instances`, in order: what names their content."""
        with self._reading() as repository:
            return repository.blob_keys_for(self._scoped(query))

    def instances(self, query: Query) -> list[RetrieveItem]:
        """Every instance under the matched entities, for C-MOVE, C-GET and WADO-RS."""
        with self._reading() as repository:
            return repository.instances_for(self._scoped(query))

    def _scoped(self, query: Query) -> Query:
        """``query`` seeing the studies of the visible states alone."""
        return dataclasses.replace(query, visible_states=self.visible)

    @contextmanager
    def _reading(self) -> Iterator[Repository]:
        """A read unit of work, its failures told in the services' words."""
        try:
            with self.index.unit_of_work() as repository:
                yield repository
        except InvalidQueryValue as error:
            raise InvalidQuery(str(error)) from error
        except IndexUnavailable as error:
            log.error("the index is unavailable: %s", error)
            raise OutOfResources("the index is unavailable") from error
