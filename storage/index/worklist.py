"""A :class:`storage.worklist.WorklistQuery` compiled to one SQL statement (PS3.4 K.6.1.2).

Shape of the statement, one row per scheduled procedure step::

    SELECT <the item's columns, labelled by keyword>
    FROM procedure_step JOIN imaging_order ON procedure_step.order_fk = imaging_order.id
    WHERE <conditions>                                   -- matching.column_predicate
      AND procedure_step.status IN ('SCHEDULED', 'ARRIVED', 'READY')   -- unless asked
      AND imaging_order.status NOT IN ('cancelled', 'completed', 'discontinued')
    ORDER BY start_date, start_time, procedure_step.id LIMIT :limit

Each condition becomes SQL through the very function Q/R uses (``matching.column_predicate``):
single value, wildcard (``%`` and ``_`` escaped), range, list of UIDs or values, PN by its
folded match form. Items come in the order they are scheduled, which is the order a modality
shows them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, or_, select
from sqlalchemy.engine import Connection

from storage.index.matching import column_predicate
from storage.index.models import imaging_order, procedure_step
from storage.query import Condition, InvalidQueryValue, Range, SingleValue
from storage.temporal import time_upper_bound
from storage.worklist import (
    ATTRIBUTES,
    BY_KEYWORD,
    ENDED_ORDER_STATUSES,
    START_DATE,
    START_TIME,
    TO_BE_DONE,
    Entity,
    WorklistAttribute,
    WorklistQuery,
    WorklistRecord,
)

_TABLES: dict[Entity, Table] = {Entity.ORDER: imaging_order, Entity.STEP: procedure_step}


def worklist_statement(query: WorklistQuery) -> Select[Any]:
    """One row per matching step, each column labelled by its keyword (see the module doc)."""
    columns = [_column(attribute).label(attribute.keyword) for attribute in ATTRIBUTES]
    where: list[ColumnElement[bool]] = []
    conditions = query.conditions
    if query.combined_datetime:
        combined = _combined_datetime(conditions)
        if combined is not None:
            where.append(combined)
            conditions = tuple(c for c in conditions if c.keyword not in (START_DATE, START_TIME))
    for condition in conditions:
        where.append(_predicate(condition, query.fuzzy_person_names))
    if not query.asks_status:
        where.append(procedure_step.c.status.in_([str(s) for s in TO_BE_DONE]))
    if not query.includes_ended:
        where.append(imaging_order.c.status.notin_(ENDED_ORDER_STATUSES))
    return (
        select(*columns)
        .select_from(procedure_step.join(imaging_order,
                                         procedure_step.c.order_fk == imaging_order.c.id))
        .where(*where)
        .order_by(procedure_step.c.start_date, procedure_step.c.start_time, procedure_step.c.id)
        .limit(query.limit)
    )


class WorklistRecords:
    """Worklist reads on one connection (``repository.worklist``)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def find(self, query: WorklistQuery) -> list[WorklistRecord]:
        """The items ``query`` matches, in scheduled order (at most ``query.limit``)."""
        rows = self.connection.execute(worklist_statement(query)).mappings()
        return [{key: _text(value) for key, value in row.items()} for row in rows]


def _column(attribute: WorklistAttribute) -> ColumnElement[Any]:
    return _TABLES[attribute.entity].c[attribute.column]


def _predicate(condition: Condition, fuzzy: bool) -> ColumnElement[bool]:
    attribute = BY_KEYWORD.get(condition.keyword)
    if attribute is None:
        raise InvalidQueryValue(f"matching on {condition.keyword} is not supported")
    table = _TABLES[attribute.entity]
    return column_predicate(
        table.c[attribute.column], attribute.vr, condition.matcher,
        match_form=table.c[attribute.match_form] if attribute.match_form else None,
        fuzzy=fuzzy, keyword=attribute.keyword,
    )


def _combined_datetime(conditions: tuple[Condition, ...]) -> ColumnElement[bool] | None:
    """Combined date and time range matching, PS3.4 C.2.2.2.5.1: a start date range and a
    start time range are one range from (low date, low time) to (high date, high time);
    None when the query does not have that pair (each is then matched on its own)."""
    by_keyword = {c.keyword: c.matcher for c in conditions}
    date, time = by_keyword.get(START_DATE), by_keyword.get(START_TIME)
    if not isinstance(date, SingleValue | Range) or not isinstance(time, SingleValue | Range):
        return None
    date_low, date_high = ((date.value, date.value) if isinstance(date, SingleValue)
                           else (date.low, date.high))
    time_low, time_high = ((time.value, time.value) if isinstance(time, SingleValue)
                           else (time.low, time.high))
    day, at = procedure_step.c.start_date, procedure_step.c.start_time
    parts: list[ColumnElement[bool]] = []
    if date_low is not None:
        parts.append(day >= date_low if time_low is None
                     else or_(day > date_low, and_(day == date_low, at >= time_low)))
    if date_high is not None:
        parts.append(day <= date_high if time_high is None
                     else or_(day < date_high,
                              and_(day == date_high, at <= time_upper_bound(time_high))))
    return and_(*parts) if parts else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
