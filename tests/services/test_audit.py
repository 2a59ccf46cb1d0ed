"""The audit trail's writer on a real index: queries are written in batches by a background
thread, closing writes what is queued, keys are bounded, and an unreachable index keeps the
events queued instead of losing them."""

from __future__ import annotations

from pathlib import Path

from pacs.services.audit import MAX_KEYS, MAX_VALUE, AuditTrail, describe_keys
from storage.attributes import Level
from storage.index import Index
from storage.query import Condition, Query, Range, SingleValue, UidList, Wildcard
from tests.support.wait import until


def _events(index: Index) -> list[dict[str, object]]:
    with index.unit_of_work() as repository:
        return [{"actor": e.actor, "action": e.action, "outcome": e.outcome, **e.detail}
                for e in repository.audit.events(action="query", limit=10_000)]


def _query(**keys: str) -> Query:
    return Query(level=Level.STUDY, conditions=tuple(
        Condition(k, Wildcard(v) if "*" in v else SingleValue(v)) for k, v in keys.items()))


def test_queries_are_written_in_the_background_with_level_matches_and_keys(
    index: Index,
) -> None:
    trail = AuditTrail(index=index, flush_interval_s=0.05)
    try:
        for number in range(120):
            trail.query(who="http:127.0.0.1", how="QIDO-RS",
                        query=_query(PatientName="Doe*", PatientID=f"P{number}"),
                        matches=number)
        events = until("120 query events", lambda: (e := _events(index)) and len(e) == 120
                       and e)
    finally:
        trail.close()
    newest = events[0]
    assert newest["actor"] == "http:127.0.0.1"
    assert newest["outcome"] == "119 matches"
    assert newest["level"] == "STUDY"
    assert newest["keys"] == {"PatientName": "Doe*", "PatientID": "P119"}


def test_close_writes_what_is_queued(index: Index) -> None:
    trail = AuditTrail(index=index, flush_interval_s=3600)  # never by the timer
    trail.query(who="dimse:FINDSCU@127.0.0.1", how="C-FIND", query=_query(), matches=0)
    trail.refused_query(who="dimse:FINDSCU@127.0.0.1", how="C-FIND", reason="bad date")
    trail.close()
    assert sorted(str(e["outcome"]) for e in _events(index)) == ["0 matches", "refused"]


def test_turned_off_records_no_query(index: Index) -> None:
    trail = AuditTrail(index=index, queries=False)
    trail.query(who="http:127.0.0.1", how="QIDO-RS", query=_query(), matches=3)
    trail.close()
    assert _events(index) == []


def test_an_unreachable_index_keeps_the_events_queued(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    index.upgrade()
    trail = AuditTrail(index=index, flush_interval_s=3600)
    trail.query(who="http:127.0.0.1", how="QIDO-RS", query=_query(), matches=1)
    broken = Index("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens there
    trail.index = broken
    trail.flush()  # fails, keeps the event
    trail.index = index
    trail.close()
    assert [e["outcome"] for e in _events(index)] == ["1 matches"]
    broken.dispose()
    index.dispose()


def test_keys_are_bounded() -> None:
    many = tuple(Condition(f"Key{n}", SingleValue("x" * 500)) for n in range(40))
    keys = describe_keys(many)
    assert len(keys) == MAX_KEYS + 1
    assert all(len(value) <= MAX_VALUE for value in keys.values())
    assert describe_keys((Condition("StudyDate", Range("20240101", None)),
                          Condition("SOPInstanceUID", UidList(tuple(f"1.2.{n}"
                                                                    for n in range(9)))))) == {
        "StudyDate": "20240101-", "SOPInstanceUID": "1.2.0\\1.2.1\\1.2.2\\1.2.3\\..."}


def _refusals(index: Index, action: str) -> list[dict[str, object]]:
    with index.unit_of_work() as repository:
        return [{"actor": e.actor, "outcome": e.outcome, **e.detail}
                for e in repository.audit.events(action=action, limit=10_000)]


def test_refusals_are_counted_per_kind_and_written_as_one_row_each(index: Index) -> None:
    trail = AuditTrail(index=index, queries=False, flush_interval_s=3600)  # close() writes
    firsts = [trail.refusal(who="dimse:@127.0.0.2", action="connection-refused",
                            reason="too many connections", detail={"limit": 16})
              for _ in range(500)]
    trail.refusal(who="http:127.0.0.3", action="connection-refused", reason="too many")
    trail.close()
    assert firsts[0] and not any(firsts[1:])  # one log line for the flood, not 500
    rows = sorted(_refusals(index, "connection-refused"), key=lambda r: str(r["actor"]))
    assert [(r["actor"], r["outcome"], r["count"]) for r in rows] == [
        ("dimse:@127.0.0.2", "too many connections", 500), ("http:127.0.0.3", "too many", 1)]
    assert rows[0]["limit"] == 16


def test_refusals_of_many_peers_are_folded_into_one_row(index: Index) -> None:
    from pacs.services.audit import MANY_PEERS, MAX_REFUSAL_KINDS

    trail = AuditTrail(index=index, queries=False, flush_interval_s=3600)
    peers = MAX_REFUSAL_KINDS + 1000
    for number in range(peers):
        trail.refusal(who=f"http:127.1.{number // 256}.{number % 256}", action="http-refused",
                      reason="403 cross-site")
    trail.close()
    rows = _refusals(index, "http-refused")
    assert len(rows) == MAX_REFUSAL_KINDS + 1
    assert sum(int(str(r["count"])) for r in rows) == peers
    assert [r["count"] for r in rows if r["actor"] == MANY_PEERS] == [1000]
