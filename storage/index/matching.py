"""A :class:`storage.query.Query` compiled to one SQL statement (PS3.4 C.2.2.2 matching).

Shape of the statement, for one row per entity at the query level::

    SELECT page.<columns>, <computed keys as scalar subqueries on page.<level>_pk>
    FROM (SELECT <level and upper-level ids and columns>
          FROM <level> JOIN <levels above>                          -- joins go upward only
          WHERE <conditions> AND study.state IN (:visible)            -- EXISTS for lower levels
          ORDER BY <level>.id LIMIT :limit OFFSET :offset) AS page
    ORDER BY page.<level>_pk

Matching, LIMIT and OFFSET run in the inner select, on indexed columns; the computed keys
(counts, ModalitiesInStudy, ...) are computed afterwards for the rows of the page only. The
page carries the entities' columns itself: joined back to its table by id instead, the page
of a query without conditions (1,000 studies of 100,000) was joined by a hash join over the
whole table on PostgreSQL (the planner's choice at that size), a scan that grows with the
archive.
Only studies in one of ``query.visible_states`` are seen (the workflow says which: viewers
see archived ones): a patient is visible when one of its studies is, and the patient-level
counts count visible studies alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Table,
    and_,
    distinct,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ScalarSelect
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.util import ClauseAdapter
from sqlalchemy.types import String

from storage.attributes import BY_KEYWORD, DEPTH, REQUEST_ATTRIBUTES, Attribute, Level
from storage.index.models import (
    TABLES,
    instance,
    patient,
    request_attribute,
    series,
    study,
)
from storage.normalize import normalize_text
from storage.query import (
    LISTED_ATTRIBUTE,
    SEQUENCES,
    UNIQUE_KEYS,
    Computed,
    Condition,
    InvalidQueryValue,
    Query,
    Range,
    SequenceItem,
    SingleValue,
    UidList,
    ValueList,
    Wildcard,
)
from storage.temporal import format_utc, parse_datetime, time_upper_bound

_BY_DEPTH = sorted(DEPTH, key=DEPTH.__getitem__)
# The foreign key of a level's table to the table of the level above.
_PARENT_FK = {Level.STUDY: "patient_fk", Level.SERIES: "study_fk", Level.IMAGE: "series_fk"}
_REQUEST_KEYWORDS = {a.keyword: a for a in REQUEST_ATTRIBUTES}
LIKE_ESCAPE = "\\"
LIST_SEPARATOR = ","  # never inside a CS value or a UID

TableLike = Table | FromClause


def find_statement(query: Query, dialect: str) -> Select[Any]:
    """One row per entity at ``query.level``, labelled by keyword (see the module doc).

    Keys that cannot be returned at this level (below it, or unknown) are left out; the caller
    reports them as None. Multi-valued computed keys come back as ``LIST_SEPARATOR``-joined
    text, in no particular order.
    """
    level = query.level
    ids = [TABLES[lvl].c.id.label(f"{lvl.value.lower()}_pk") for lvl in (level, *_above(level))]
    carried: list[Any] = []  # the page's columns, by keyword
    wanted: list[str | Computed] = []  # the answer's, in order
    for keyword in _returned_keys(query):
        attribute = BY_KEYWORD.get(keyword)
        if attribute is not None:
            if DEPTH[attribute.level] <= DEPTH[level]:
                carried.append(TABLES[attribute.level].c[attribute.column].label(keyword))
                wanted.append(keyword)
        elif keyword in Computed.__members__:
            computed = Computed(keyword)
            if DEPTH[computed.level] <= DEPTH[level]:
                wanted.append(computed)
    page = _paged(query, (*ids, *carried)).subquery("page")
    # the computed keys name the entity's table (``study.id``): here its id on the page
    on_page = ClauseAdapter(page)
    columns = [
        on_page.traverse(_computed(key, dialect, query.visible_states)).label(key.value)
        if isinstance(key, Computed) else page.c[key]
        for key in wanted
    ]
    return select(*columns).select_from(page).order_by(page.c[ids[0].name])


def instances_statement(query: Query, *, keys_only: bool = False) -> Select[Any]:
    """Every instance under the entities ``query`` matches (LIMIT/OFFSET count entities);
    ``keys_only``: just their blob keys (what names their content), in the same order."""
    columns: tuple[Any, ...] = (instance.c.blob_key,) if keys_only else (
        instance.c.sop_class_uid,
        instance.c.sop_instance_uid,
        instance.c.transfer_syntax_uid,
        instance.c.blob_key,
        instance.c.blob_size,
        study.c.study_instance_uid,
        series.c.series_instance_uid,
    )
    statement = (
        select(*columns)
        .select_from(
            instance.join(series, _parent_join(Level.SERIES))
            .join(study, _parent_join(Level.STUDY))
            .join(patient, _parent_join(Level.PATIENT))
        )
        .where(_visible(study, query.visible_states), _series_visible(series))
        .order_by(study.c.id, series.c.id, instance.c.instance_number, instance.c.id)
    )
    paged = query.limit is not None or query.offset
    matched = _paged(query) if paged else _matching_ids(query)
    # Driven from the matched ids down the foreign-key indexes, never by a scan of instances.
    return statement.where(_INSTANCES_OF[query.level].in_(matched.scalar_subquery()))


_INSTANCES_OF: dict[Level, ColumnElement[int]] = {
    Level.PATIENT: study.c.patient_fk,
    Level.STUDY: series.c.study_fk,
    Level.SERIES: instance.c.series_fk,
    Level.IMAGE: instance.c.id,
}


def _paged(query: Query, columns: Sequence[Any] = ()) -> Select[Any]:
    """The ids (or ``columns``) of one page of matches, in id order.

    With conditions the order is written ``id + 0``: the planner then sorts the (few) matches
    found through a condition's index instead of walking the primary key in order and testing
    every row, which SQLite without statistics prefers as soon as there is a LIMIT.
    """
    ids = TABLES[query.level].c.id
    order = ids + literal_column("0") if query.conditions else ids
    return (
        _matching_ids(query, columns).order_by(order).limit(query.limit)
        .offset(query.offset or None)
    )


def _visible(table: TableLike, states: frozenset[str]) -> ColumnElement[bool]:
    """The study is in one of the visible ``states`` (none: nothing is visible).

    On SQLite written ``state || '' = 'archived'`` (:class:`_StateUnindexed`) so that it never
    drives a query from the index on ``state``: nearly every study is archived, and SQLite
    (without statistics) would otherwise walk that index, a scan of the whole table, instead of
    the index of a condition. PostgreSQL gets the plain ``state = 'archived'``: its statistics
    know that nearly every study is archived. Given the expression instead it guesses that
    0.5 % are, and a query without conditions (the universal C-FIND, ``/studies``) then reads
    and sorts every study instead of walking the primary key until its page is full: 0.3 s at
    100,000 studies, ten times what it costs at 10,000.
    """
    if len(states) == 1:
        return _StateUnindexed(table.c.state) == next(iter(states))
    return _StateUnindexed(table.c.state).in_(sorted(states))


class _StateUnindexed(FunctionElement[str]):
    """A study's state, which SQLite must not look up by its index (see :func:`_visible`)."""

    name = "state_unindexed"
    inherit_cache = True
    type = String()


@compiles(_StateUnindexed)
def _state_as_is(element: _StateUnindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(_StateUnindexed, "sqlite")
def _state_unindexed(element: _StateUnindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)} || '')"


def _series_visible(table: TableLike) -> ColumnElement[bool]:
    """The series was not rejected from a viewer (KOS 113001^DCM and the like)."""
    return table.c.rejected == false()


def _returned_keys(query: Query) -> list[str]:
    return list(dict.fromkeys((*UNIQUE_KEYS[query.level], *query.return_keys)))


def _above(level: Level) -> list[Level]:
    """The levels above ``level``, nearest first."""
    return [upper for upper in reversed(_BY_DEPTH) if DEPTH[upper] < DEPTH[level]]


def _parent_join(upper: Level) -> ColumnElement[bool]:
    """The join of ``upper``'s table to the table of the level just below it."""
    child = _BY_DEPTH[DEPTH[upper] + 1]
    return TABLES[child].c[_PARENT_FK[child]] == TABLES[upper].c.id


def _matching_ids(query: Query, columns: Sequence[Any] = ()) -> Select[Any]:
    """The ids (or ``columns``) of every match of ``query``, in no order."""
    level = query.level
    table = TABLES[level]
    source: FromClause = table
    for upper in _above(level):
        source = source.join(TABLES[upper], _parent_join(upper))
    return select(*(columns or (table.c.id,))).select_from(source).where(*_where(query, level))


def _where(query: Query, level: Level) -> list[ColumnElement[bool]]:
    """The conditions, on tables of ``level`` and above (joined) or in EXISTS (below)."""
    where: list[ColumnElement[bool]] = []
    if level is Level.PATIENT:
        where.append(_exists_below(Level.PATIENT, Level.STUDY, lambda _: true(),
                                   query.visible_states))
    else:
        where.append(_visible(study, query.visible_states))
    if DEPTH[level] >= DEPTH[Level.SERIES]:
        where.append(_series_visible(series))
    for condition in query.conditions:
        where.append(_condition(condition, level, query.fuzzy_person_names, query.visible_states))
    return where


def _condition(condition: Condition, level: Level, fuzzy: bool, visible: frozenset[str]
               ) -> ColumnElement[bool]:
    keyword, matcher = condition.keyword, condition.matcher
    attribute = BY_KEYWORD.get(keyword)
    if attribute is not None:
        if isinstance(matcher, SequenceItem):
            raise InvalidQueryValue(f"{keyword} is not a sequence")
        if DEPTH[attribute.level] <= DEPTH[level]:
            return _predicate(TABLES[attribute.level], attribute, matcher, fuzzy)
        return _exists_below(
            level, attribute.level, lambda t: _predicate(t[attribute.level], attribute,
                                                         matcher, fuzzy), visible
        )
    if keyword in LISTED_ATTRIBUTE:
        listed = BY_KEYWORD[LISTED_ATTRIBUTE[Computed(keyword)]]
        if isinstance(matcher, SequenceItem):
            raise InvalidQueryValue(f"{keyword} is not a sequence")
        anchor = level if DEPTH[level] <= DEPTH[Level.STUDY] else Level.STUDY
        return _exists_below(
            anchor, listed.level, lambda t: _predicate(t[listed.level], listed, matcher, fuzzy),
            visible,
        )
    if keyword in SEQUENCES:
        if not isinstance(matcher, SequenceItem):
            raise InvalidQueryValue(f"{keyword} is a sequence: only sequence matching applies")
        return _request_exists(level, matcher.conditions, fuzzy, visible)
    if keyword in _REQUEST_KEYWORDS:  # a request attribute named outside its sequence
        return _request_exists(level, (condition,), fuzzy, visible)
    raise InvalidQueryValue(f"matching on {keyword} is not supported")


def _request_exists(
    level: Level, conditions: tuple[Condition, ...], fuzzy: bool, visible: frozenset[str]
) -> ColumnElement[bool]:
    """Sequence matching on RequestAttributesSequence items (one row per item)."""

    def item(_: dict[Level, TableLike]) -> ColumnElement[bool]:
        return and_(
            *(_predicate(request_attribute, _REQUEST_KEYWORDS[c.keyword], c.matcher, fuzzy)
              for c in conditions if not isinstance(c.matcher, SequenceItem))
        )

    anchor = level if DEPTH[level] <= DEPTH[Level.SERIES] else Level.SERIES
    return _exists_below(anchor, None, item, visible)


def _exists_below(
    anchor: Level,
    target: Level | None,
    predicate: Callable[[dict[Level, TableLike]], ColumnElement[bool]],
    visible: frozenset[str],
) -> ColumnElement[bool]:
    """EXISTS a descendant of the outer ``anchor`` row, down to ``target`` (None: a request
    attribute item of a series), for which ``predicate`` holds; in visible studies only."""
    source, where, aliases = _descendants(anchor, target, visible)
    return exists(select(literal(1)).select_from(source).where(*where, predicate(aliases)))


def _descendants(
    anchor: Level, target: Level | None, visible: frozenset[str]
) -> tuple[FromClause, list[ColumnElement[bool]], dict[Level, TableLike]]:
    """The tables from below ``anchor`` down to ``target``, joined, and their link to the
    outer ``anchor`` row (correlated). Tables are aliases: they never collide with the outer
    query's. A study among them must be in a ``visible`` state."""
    deepest = DEPTH[target] if target is not None else DEPTH[Level.SERIES]
    levels = [lvl for lvl in _BY_DEPTH if DEPTH[anchor] < DEPTH[lvl] <= deepest]
    aliases: dict[Level, TableLike] = {lvl: TABLES[lvl].alias() for lvl in levels}
    outer = {anchor: TABLES[anchor]}
    source: FromClause | None = None
    link: ColumnElement[bool] | None = None  # of the table last joined, to its parent
    if target is None:
        source = request_attribute
        link = request_attribute.c.series_fk == {**outer, **aliases}[Level.SERIES].c.id
    for lvl in reversed(levels):
        table = aliases[lvl]
        source = table if source is None or link is None else source.join(table, link)
        parent = {**outer, **aliases}[_BY_DEPTH[DEPTH[lvl] - 1]]
        link = table.c[_PARENT_FK[lvl]] == parent.c.id
    if source is None or link is None:
        raise InvalidQueryValue(f"nothing below {anchor} to match")
    where = [link]
    if Level.STUDY in aliases:
        where.append(_visible(aliases[Level.STUDY], visible))
    if Level.SERIES in aliases:
        where.append(_series_visible(aliases[Level.SERIES]))
    return source, where, aliases


def _predicate(
    table: TableLike, attribute: Attribute, matcher: Any, fuzzy: bool
) -> ColumnElement[bool]:
    """One matcher on one registry attribute's column (see :func:`column_predicate`)."""
    return column_predicate(
        table.c[attribute.column], attribute.vr, matcher,
        match_form=table.c[attribute.normalized] if attribute.normalized else None,
        fuzzy=fuzzy, keyword=attribute.keyword,
    )


def column_predicate(
    column: ColumnElement[Any], vr: str, matcher: Any, *,
    match_form: ColumnElement[Any] | None = None, fuzzy: bool = True, keyword: str = "",
) -> ColumnElement[bool]:
    """One matcher on one column, PS3.4 C.2.2.2.1-5 and 8: the one place a matcher becomes
    SQL, for Q/R (the registry's columns) and the Modality Worklist (``worklist.py``) alike.

    ``match_form``: the column holding the value's match form, if any: for PN the folded text
    (:func:`storage.normalize.normalize_text`, used when ``fuzzy``), for DT the first instant
    in UTC. Sequence matching (C.2.2.2.6) is the caller's: it is not one column.
    """
    if vr == "PN" and fuzzy and match_form is not None:
        column = match_form
        matcher = _folded(matcher)
    if vr == "DT" and match_form is not None and isinstance(matcher, SingleValue | Range):
        return _datetime_range(match_form, matcher)
    if isinstance(matcher, SingleValue):
        return column == _typed(vr, matcher.value)
    if isinstance(matcher, Wildcard):
        return column.like(like_pattern(matcher.pattern), escape=LIKE_ESCAPE)
    if isinstance(matcher, UidList):
        return column.in_(matcher.uids)
    if isinstance(matcher, ValueList):
        return column.in_([_typed(vr, v) for v in matcher.values])
    if isinstance(matcher, Range):
        return _range(column, vr, matcher)
    raise InvalidQueryValue(f"{keyword}: {type(matcher).__name__} does not apply")


def _folded(matcher: Any) -> Any:
    if isinstance(matcher, SingleValue):
        return SingleValue(normalize_text(matcher.value))
    if isinstance(matcher, Wildcard):
        return Wildcard(normalize_text(matcher.pattern))
    if isinstance(matcher, ValueList):
        return ValueList(tuple(normalize_text(v) for v in matcher.values))
    return matcher


def _typed(vr: str, value: str) -> str | int | float:
    try:
        if vr in {"IS", "US", "SS", "UL", "SL"}:
            return int(value)
        if vr in {"DS", "FL", "FD"}:
            return float(value)
    except ValueError:
        raise InvalidQueryValue(f"{value!r} is not a number ({vr})") from None
    return value


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as LIKE: escape the escape, ``%`` and ``_`` first."""
    escaped = (
        pattern.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )
    return escaped.replace("*", "%").replace("?", "_")


def _range(column: ColumnElement[Any], vr: str, matcher: Range) -> ColumnElement[bool]:
    """Range matching, PS3.4 C.2.2.2.5: DA and other text as is, TM padded at the top."""
    low, high = matcher.low, matcher.high
    if vr == "TM" and high is not None:
        high = time_upper_bound(high)
    parts: list[ColumnElement[bool]] = []
    if low is not None:
        parts.append(column >= low)
    if high is not None:
        parts.append(column <= high)
    if vr == "TM" and matcher.low is not None and matcher.high is not None \
            and matcher.low > matcher.high:
        return or_(*parts)  # 2300-0100: the range spans midnight
    return and_(*parts) if parts else false()


def _datetime_range(
    column: ColumnElement[Any], matcher: SingleValue | Range
) -> ColumnElement[bool]:
    """DT values compare in UTC; a single value or an end stands for the period it names."""
    low, high = (
        (matcher.value, matcher.value) if isinstance(matcher, SingleValue)
        else (matcher.low, matcher.high)
    )
    parts: list[ColumnElement[bool]] = []
    try:
        if low is not None:
            parts.append(column >= format_utc(parse_datetime(low)[0]))
        if high is not None:
            parts.append(column <= format_utc(parse_datetime(high)[1]))
    except ValueError as error:
        raise InvalidQueryValue(str(error)) from None
    return and_(*parts) if parts else false()


_COUNTED = {
    Computed.NumberOfPatientRelatedStudies: Level.STUDY,
    Computed.NumberOfPatientRelatedSeries: Level.SERIES,
    Computed.NumberOfPatientRelatedInstances: Level.IMAGE,
    Computed.NumberOfStudyRelatedSeries: Level.SERIES,
    Computed.NumberOfStudyRelatedInstances: Level.IMAGE,
    Computed.NumberOfSeriesRelatedInstances: Level.IMAGE,
}


@cache
def _computed(key: Computed, dialect: str, visible: frozenset[str]) -> ScalarSelect[Any]:
    """A computed key of the outer row's entity (PS3.4 C.6.1.1, C.6.2.1), in visible studies
    only.

    Built once per key and dialect: aliases of the wide tables are costly to make.
    """
    if key in LISTED_ATTRIBUTE:
        listed = BY_KEYWORD[LISTED_ATTRIBUTE[key]]
        source, where, aliases = _descendants(key.level, listed.level, visible)
        column = aliases[listed.level].c[listed.column]
        aggregate = (
            func.string_agg(distinct(column), literal(LIST_SEPARATOR))
            if dialect == "postgresql"
            else func.group_concat(distinct(column))
        )
        return select(aggregate).select_from(source).where(*where).scalar_subquery()
    source, where, _ = _descendants(key.level, _COUNTED[key], visible)
    return select(func.count()).select_from(source).where(*where).scalar_subquery()
