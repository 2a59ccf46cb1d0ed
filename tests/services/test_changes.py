"""The change feed's numbering: ordered and gap-free with concurrent writers, on SQLite and
PostgreSQL; a poller that resumes from its last number misses nothing and sees nothing twice;
retention pruning keeps the numbering going."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest

from pacs.services.changes import ChangeEvent, ChangeService, record_change
from pacs.services.webhooks import Webhook, signature
from storage.index import Index

WAIT_S = 60.0  # a bound on waiting for the other thread: reached only when the test fails


class Boom(Exception):
    """Rolls a unit of work back."""


@pytest.fixture
def postgres_index(postgres_url: str) -> Iterator[Index]:
    built = Index(postgres_url)
    built.upgrade()
    try:
        yield built
    finally:
        built.dispose()


def _append(index: Index, study: str) -> None:
    with index.unit_of_work(write=True) as repository:
        record_change(repository, ChangeEvent.STORED, study, f"{study}.1", f"{study}.1.1")


def test_a_later_id_committing_first_is_not_skipped_by_a_poller(postgres_index: Index) -> None:
    """Transaction A writes its change first (the smaller id) but commits last; B commits
    in between and a poller reads. The poller sees B as 1, then A as 2: never a number it
    passed over. (PostgreSQL: SQLite's one writer lock serializes A and B.)"""
    feed = ChangeService(index=postgres_index)
    written = threading.Event()
    release = threading.Event()

    def transaction_a() -> None:
        with postgres_index.unit_of_work(write=True) as repository:
            record_change(repository, ChangeEvent.STORED, "1.2.A", "1.2.A.1", "1.2.A.1.1")
            written.set()
            assert release.wait(WAIT_S)

    a = threading.Thread(target=transaction_a)
    a.start()
    try:
        assert written.wait(WAIT_S)
        _append(postgres_index, "1.2.B")  # a larger id, committed first
        first = feed.page(0, 100)
        assert [(c.seq, c.study_instance_uid) for c in first.changes] == [(1, "1.2.B")]
        assert first.last == 1
    finally:
        release.set()
        a.join(WAIT_S)
    second = feed.page(first.last, 100)
    assert [(c.seq, c.study_instance_uid) for c in second.changes] == [(2, "1.2.A")]
    assert feed.page(second.last, 100).changes == []


def test_a_rolled_back_change_leaves_no_hole(index: Index) -> None:
    feed = ChangeService(index=index)
    _append(index, "1.3.1")
    with pytest.raises(Boom), index.unit_of_work(write=True) as repository:
        record_change(repository, ChangeEvent.STORED, "1.3.2")
        raise Boom
    _append(index, "1.3.3")
    page = feed.page(0, 10)
    assert [(c.seq, c.study_instance_uid) for c in page.changes] == [(1, "1.3.1"), (2, "1.3.3")]


def test_concurrent_writers_and_a_poller_see_every_change_once_in_order(index: Index) -> None:
    """Writers append (some roll back) while a poller reads small pages from its last number:
    the poller's numbers are 1..n without a gap or a repeat, and name every committed change
    exactly once."""
    feed = ChangeService(index=index)
    writers, per_writer = 4, 25
    done = threading.Event()
    committed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            for n in range(per_writer):
                uid = f"1.4.{number}.{n}"
                try:
                    with index.unit_of_work(write=True) as repository:
                        record_change(repository, ChangeEvent.STORED, uid)
                        if n % 5 == 4:
                            raise Boom
                except Boom:
                    continue
                with lock:
                    committed.append(uid)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    seen: list[tuple[int, str]] = []
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()

    def poll() -> None:
        since = 0
        while True:
            finished = done.is_set()
            page = feed.page(since, 7)
            seen.extend((c.seq, c.study_instance_uid) for c in page.changes)
            if page.changes:
                since = page.changes[-1].seq
            elif finished:
                return

    poller = threading.Thread(target=poll)
    poller.start()
    for thread in threads:
        thread.join(WAIT_S)
    done.set()
    poller.join(WAIT_S)
    assert not errors
    assert [seq for seq, _ in seen] == list(range(1, len(committed) + 1))
    assert sorted(uid for _, uid in seen) == sorted(committed)
    assert len(committed) == writers * per_writer * 4 // 5


def test_pruning_drops_old_changes_but_never_reuses_a_number(index: Index) -> None:
    feed = ChangeService(index=index, retention=dt.timedelta(days=1))
    for n in range(3):
        _append(index, f"1.5.{n}")
    assert feed.page(0, 10).last == 3
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert feed.prune(now=later) == 2  # the newest is kept: it holds the highest number
    page = feed.page(0, 10)
    assert [c.seq for c in page.changes] == [3]
    _append(index, "1.5.9")
    assert [(c.seq, c.study_instance_uid) for c in feed.page(3, 10).changes] == [(4, "1.5.9")]
    assert feed.prune() == 0  # nothing is older than a day now


def test_numbering_plans_a_delivery_per_wanted_event_and_webhook(index: Index) -> None:
    hooks = [Webhook.parse("http://127.0.0.1:9/all"),
             Webhook.parse("http://127.0.0.1:9/rejections,rejected")]
    feed = ChangeService(index=index, webhooks=hooks)
    _append(index, "1.6.1")
    with index.unit_of_work(write=True) as repository:
        record_change(repository, ChangeEvent.REJECTED, "1.6.1")
    assert feed.sequence() == 2
    with index.unit_of_work() as repository:
        planned = sorted((d.change_seq, d.webhook) for d in repository.changes.deliveries())
        routing_jobs = repository.jobs.list()
        due_for_routing = repository.jobs.due(dt.datetime.now(dt.UTC))
    assert planned == [(1, 0), (2, 0), (2, 1)]
    assert routing_jobs == [] and not due_for_routing  # routing never sees webhook jobs


def test_a_webhook_is_an_http_url_with_known_events() -> None:
    assert Webhook.parse("https://example.test/x?a=1,stored,rejected").events == {
        "stored", "rejected"}
    for bad in ("ftp://example.test/x", "http:///nohost", "http://example.test/x,exploded",
                "http://example.test:99999999/"):
        with pytest.raises(ValueError):
            Webhook.parse(bad)
    # RFC 4231 test case 2: HMAC-SHA-256 of "what do ya want for nothing?" under "Jefe"
    assert signature(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
