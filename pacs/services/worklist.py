"""The Modality Worklist service (PS3.4 K): which scheduled procedure steps a modality asks for.

Protocol neutral: the DIMSE front end (``pacs.dimse.worklist``) turns a C-FIND Identifier into
a :class:`WorklistQuery` and each record into a response; another front end could do the same
with the same query. Matching is in SQL (``storage.index.worklist``), in one statement with a
LIMIT: at most ``max_results`` items (the Q/R cap, ``--max-query-results``), a WARNING logged
when the cap cuts the answer short.

A query made on behalf of someone (``who``) is audited as Q/R queries are (level WORKLIST,
its keys, the number of items sent, or refused with the reason).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator

from pacs.services.audit import AuditTrail
from pacs.services.errors import InvalidQuery, OutOfResources
from storage.index import Index, IndexUnavailable
from storage.query import InvalidQueryValue
from storage.worklist import WorklistQuery, WorklistRecord

__all__ = ["WorklistQuery", "WorklistRecord", "WorklistService"]

log = logging.getLogger(__name__)


class WorklistService:
    """Reads worklist items from the index; thread-safe (a unit of work per query)."""

    def __init__(self, *, index: Index, max_results: int = 1000,
                 audit: AuditTrail | None = None) -> None:
        if max_results < 1:
            raise ValueError("max_results must be positive")
        self.index = index
        self.max_results = max_results
        self.audit = audit

    def find(self, query: WorklistQuery, *, who: str | None = None, how: str = "C-FIND"
             ) -> Generator[WorklistRecord, None, None]:
        """The items ``query`` matches, in scheduled order, at most ``max_results`` (or
        ``query.limit`` when smaller).

        The items are read before this returns, so an invalid query raises
        :class:`InvalidQuery` (an index that cannot be read: :class:`OutOfResources`) here;
        with ``who``, the query is audited once the iteration ends or is abandoned (a
        C-CANCEL, a peer gone).
        """
        wanted = self.max_results if query.limit is None else min(query.limit, self.max_results)
        try:
            records = self._read(dataclasses.replace(query, limit=wanted + 1))
        except (InvalidQuery, OutOfResources) as error:
            if who is not None and self.audit is not None:
                self.audit.refused_query(who=who, how=how, reason=str(error), query=query)
            raise
        capped = len(records) > wanted and (query.limit is None or query.limit > wanted)
        if capped:
            log.warning("worklist result capped at %d", self.max_results)
        return self._sent(records[:wanted], query, who, how, capped)

    def refused(self, *, who: str, how: str, reason: str) -> None:
        """Audit a query a front end refused before it became a :class:`WorklistQuery`."""
        if self.audit is not None:
            self.audit.refused_query(who=who, how=how, reason=reason)

    def _read(self, query: WorklistQuery) -> list[WorklistRecord]:
        try:
            with self.index.unit_of_work() as repository:
                return repository.worklist.find(query)
        except InvalidQueryValue as error:
            raise InvalidQuery(str(error)) from error
        except IndexUnavailable as error:
            log.error("the index is unavailable: %s", error)
            raise OutOfResources("the index is unavailable") from error

    def _sent(self, records: list[WorklistRecord], query: WorklistQuery, who: str | None,
              how: str, capped: bool) -> Generator[WorklistRecord, None, None]:
        sent, outcome = 0, None
        try:
            for record in records:
                yield record
                sent += 1
        except GeneratorExit:
            outcome = f"{sent} matches, stopped early"
            raise
        finally:
            if who is not None and self.audit is not None:
                self.audit.query(who=who, how=how, query=query, matches=sent, outcome=outcome,
                                 capped=capped and outcome is None)
