"""Two servers on one index (SQLite and PostgreSQL) share the studies' background work: each
study's stability check and each study's purge is claimed by one server under a lease, a dead
server's claim is taken over once its lease ran out, a live (renewed) one never is.

Each "server" here is a :class:`WorkflowService` with its own node id and its own
:class:`Index` (its own connection pool) on one database, over one file store, as two
``pacs serve`` on one PostgreSQL are."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from pacs.services.ingest import Incoming, IngestService, Origin
from pacs.services.workflow import QaGate, StudyState, WorkflowService
from storage.blobs import FileStore
from storage.index import Index
from tests.factories import datasets as f
from tests.support.wait import until

pytestmark = pytest.mark.usefixtures("lenient_reading")

ORIGIN = Origin(protocol="import")
WAIT_S = 60.0  # a bound on waiting for the other server: reached only when the test fails


class Overlap:
    """Holds each server's first blob operation until every server has started one: the
    servers' passes provably run at the same time."""

    def __init__(self, servers: int) -> None:
        self._servers = servers
        self._started: set[str] = set()
        self._lock = threading.Lock()
        self.all_started = threading.Event()

    def arrive(self, node: str) -> None:
        with self._lock:
            first = node not in self._started
            self._started.add(node)
            if len(self._started) == self._servers:
                self.all_started.set()
        if first:
            self.all_started.wait(WAIT_S)


@dataclass
class Log:
    """Which server opened or deleted which blob (shared by the servers' stores)."""

    opened: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)


class ObservedStore(FileStore):
    """The real file store of one server, recording what it opens and deletes; ``hold``
    (optional) runs before each, to make two servers' work overlap or one server stall."""

    def __init__(self, root: Path, node: str, log: Log,
                 hold: Callable[[str], None] | None = None) -> None:
        super().__init__(root, node)
        self.node = node
        self.log = log
        self.hold = hold

    def open(self, key: str) -> BinaryIO:
        if self.hold is not None:
            self.hold(self.node)
        self.log.opened.append((self.node, key))
        return super().open(key)

    def delete(self, key: str) -> None:
        if self.hold is not None:
            self.hold(self.node)
        self.log.deleted.append((self.node, key))
        super().delete(key)


@dataclass
class Site:
    """One database and one file store, and the servers started on them."""

    url: str
    root: Path
    log: Log = field(default_factory=Log)
    indexes: list[Index] = field(default_factory=list)
    made: int = 0  # instances stored so far (each one's UIDs differ)

    def server(self, node: str, *, hold: Callable[[str], None] | None = None,
               lease: dt.timedelta = dt.timedelta(seconds=30)) -> WorkflowService:
        index = Index(self.url)
        self.indexes.append(index)
        return WorkflowService(
            index=index, blobs=ObservedStore(self.root, node, self.log, hold), gate=QaGate(),
            stable_after=dt.timedelta(0), retention=dt.timedelta(0), node=node, lease=lease)

    def store(self, count: int, *, study: str | None = None) -> list[tuple[str, str]]:
        """``count`` one-instance studies (or new series of ``study``): (study, blob key)."""
        ingest = IngestService(blobs=FileStore(self.root, "ingest"), index=self.indexes[0])
        stored = []
        for _ in range(count):
            self.made += 1
            unique = ({"StudyInstanceUID": study, "SeriesNumber": self.made} if study
                      else {"PatientID": f"LEASE-{self.made}"})
            outcome = ingest.store(Incoming.data(f.to_part10_bytes(
                f.ct_instance(seed=self.made, **unique))), ORIGIN)
            with self.indexes[0].unit_of_work() as repository:
                found = repository.find_instance(outcome.sop_instance_uid)
            assert found is not None
            stored.append((found.study_instance_uid, found.blob_key))
        return stored

    def lease(self, study: str) -> tuple[str | None, dt.datetime | None]:
        with self.indexes[0].unit_of_work() as repository:
            owner, expires = repository.studies.study_lease(study)
        if expires is not None and expires.tzinfo is None:  # SQLite keeps UTC without a zone
            expires = expires.replace(tzinfo=dt.UTC)
        return owner, expires

    def stable(self, study: str) -> bool:
        with self.indexes[0].unit_of_work() as repository:
            found = repository.studies.study(study)
        return found is not None and found.stable_at is not None

    def events(self, action: str) -> list[tuple[str | None, str | None]]:
        """(study, node) of every audit event of ``action``."""
        with self.indexes[0].unit_of_work() as repository:
            return [(e.study_instance_uid, e.detail.get("node"))
                    for e in repository.audit.events(action=action)]

    def claim_as(self, node: str, study: str, *, at: dt.datetime,
                 purge: bool = False) -> dt.datetime:
        """``node`` claims ``study`` as if at ``at`` (in the past: a server that died then)."""
        with self.indexes[0].unit_of_work(write=True) as repository:
            records = repository.studies
            lease = dt.timedelta(seconds=30)
            claim = (records.claim_purgeable(StudyState.REJECTED, dt.datetime.now(dt.UTC),
                                             now=at, owner=node, lease=lease)
                     if purge else records.claim_quiet_study(
                         dt.datetime.now(dt.UTC), now=at, owner=node, lease=lease))
        assert claim is not None and claim.study_instance_uid == study
        return claim.lease_expires_at


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    schema = Index(database_url)
    schema.upgrade()
    schema.dispose()
    built = Site(database_url, tmp_path / "data")
    try:
        yield built
    finally:
        for index in built.indexes:
            index.dispose()


def _run_together(*passes: Callable[[], list[str]]) -> list[list[str]]:
    """Run each server's pass on a thread of its own, at once; their results."""
    results: list[list[str]] = [[] for _ in passes]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            results[n] = passes[n]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(passes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * WAIT_S)
    assert not errors, errors
    return results


def test_two_servers_check_each_quiet_study_once(site: Site) -> None:
    overlap = Overlap(2)
    a = site.server("node-a", hold=overlap.arrive)
    b = site.server("node-b", hold=overlap.arrive)
    stored = site.store(6)

    settled_a, settled_b = _run_together(a.settle, b.settle)

    assert overlap.all_started.is_set()  # both servers were checking studies at once
    studies = [study for study, _ in stored]
    assert sorted(settled_a + settled_b) == sorted(studies)
    assert not set(settled_a) & set(settled_b)
    # each study's pixel check read its file once, by the server that settled it
    assert Counter(key for _, key in site.log.opened) == Counter(key for _, key in stored)
    by_key = {key: node for node, key in site.log.opened}
    assert {node for node, _ in site.log.opened} == {"node-a", "node-b"}
    for study, key in stored:
        assert by_key[key] == ("node-a" if study in settled_a else "node-b")
    stable_events = site.events("stable")
    assert Counter(study for study, _ in stable_events) == Counter(studies)
    assert all(site.stable(study) for study in studies)
    assert all(site.lease(study) == (None, None) for study in studies)


def test_a_dead_servers_stability_claim_is_taken_over(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    b = site.server("node-b")
    [(study, key)] = site.store(1)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    site.claim_as("node-a", study, at=long_ago)  # its lease ran out 59 minutes ago

    with caplog.at_level(logging.INFO, logger="pacs.services.workflow"):
        assert b.settle() == [study]

    assert site.events("stable") == [(study, "node-b")]
    assert site.log.opened == [("node-b", key)]
    assert site.lease(study) == (None, None)
    assert f"stability check of {study} taken over from node-a" in caplog.text


def test_a_live_stability_claim_is_not_taken_until_it_runs_out(site: Site) -> None:
    b = site.server("node-b")
    [(study, _)] = site.store(1)
    now = dt.datetime.now(dt.UTC)
    expires = site.claim_as("node-a", study, at=now)

    assert b.settle() == []
    assert site.lease(study) == ("node-a", expires)
    assert not site.stable(study) and site.log.opened == []

    assert b.settle(now=expires + dt.timedelta(seconds=1)) == [study]  # node-a never renewed
    assert site.events("stable") == [(study, "node-b")]


def test_a_lease_renewed_while_the_check_runs_is_not_taken(site: Site) -> None:
    release = threading.Event()

    def stall(node: str) -> None:  # node-a's pixel check takes as long as the test wants
        if node == "node-a":
            release.wait(WAIT_S)

    a = site.server("node-a", hold=stall, lease=dt.timedelta(seconds=1))
    b = site.server("node-b")
    [(study, _)] = site.store(1)
    results: list[list[str]] = []
    worker = threading.Thread(target=lambda: results.append(a.settle()))
    worker.start()
    try:
        first = until("node-a claims the study", lambda: site.lease(study)[1])
        until("node-a's first lease would have run out",
              lambda: dt.datetime.now(dt.UTC) > first + dt.timedelta(milliseconds=100))
        owner, renewed = site.lease(study)
        assert owner == "node-a" and renewed is not None and renewed > first

        assert b.settle() == []
    finally:
        release.set()
        worker.join(WAIT_S)
    assert results == [[study]]
    assert site.events("stable") == [(study, "node-a")]
    assert [node for node, _ in site.log.opened] == ["node-a"]


def test_an_instance_stored_during_the_check_keeps_the_study_unstable(site: Site) -> None:
    checking = threading.Event()
    release = threading.Event()

    def stall(node: str) -> None:
        checking.set()
        release.wait(WAIT_S)

    a = site.server("node-a", hold=stall)
    [(study, _)] = site.store(1)
    results: list[list[str]] = []
    worker = threading.Thread(target=lambda: results.append(a.settle()))
    worker.start()
    try:
        assert checking.wait(WAIT_S)
        site.store(1, study=study)  # a second series arrives while its first is checked
    finally:
        release.set()
        worker.join(WAIT_S)

    assert results == [[]]
    assert not site.stable(study) and site.lease(study) == (None, None)
    assert a.settle(now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == [study]
    assert site.events("stable") == [(study, "node-a")]


def _reject(server: WorkflowService, studies: list[str]) -> None:
    for study in studies:
        server.reject(study, "wrong patient", "test")


def test_two_servers_purge_each_rejected_study_once(site: Site) -> None:
    overlap = Overlap(2)
    a = site.server("node-a", hold=overlap.arrive)
    b = site.server("node-b", hold=overlap.arrive)
    stored = site.store(6)
    studies = [study for study, _ in stored]
    _reject(a, studies)

    purged_a, purged_b = _run_together(a.purge, b.purge)

    assert overlap.all_started.is_set()
    assert sorted(purged_a + purged_b) == sorted(studies)
    assert not set(purged_a) & set(purged_b)
    assert Counter(key for _, key in site.log.deleted) == Counter(key for _, key in stored)
    deletions = site.events("delete")
    assert Counter(study for study, _ in deletions) == Counter(studies)
    assert {node for _, node in deletions} == {"node-a", "node-b"}
    assert a.studies(states=None) == []
    assert not list(FileStore(site.root).keys())


def test_a_dead_servers_purge_is_finished_by_another(site: Site) -> None:
    b = site.server("node-b")
    stored = site.store(2)
    [(study, first_key), (kept, _)] = stored
    # the second instance joins the first study: two files
    [(_, second_key)] = site.store(1, study=study)
    _reject(b, [study])
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    site.claim_as("node-a", study, at=long_ago, purge=True)
    FileStore(site.root).delete(first_key)  # node-a deleted one file, then died

    assert b.purge() == [study]

    assert site.events("delete") == [(study, "node-b")]
    assert sorted(key for _, key in site.log.deleted) == sorted([first_key, second_key])
    assert [s.study.study_instance_uid for s in b.studies(states=None)] == [kept]
    assert set(FileStore(site.root).keys()) == {stored[1][1]}


def test_a_live_purge_claim_is_not_taken(site: Site) -> None:
    b = site.server("node-b")
    [(study, key)] = site.store(1)
    _reject(b, [study])
    now = dt.datetime.now(dt.UTC)
    expires = site.claim_as("node-a", study, at=now, purge=True)

    assert b.purge() == []
    assert site.lease(study) == ("node-a", expires)
    assert site.log.deleted == [] and set(FileStore(site.root).keys()) == {key}


def test_a_single_servers_start_gives_up_every_lease(site: Site) -> None:
    a = site.server("node-a")
    [(study, _)] = site.store(1)
    site.claim_as("node-a", study, at=dt.datetime.now(dt.UTC))  # the run before a crash

    assert a.resume(only_server=False) == 0  # among several servers: a live lease is kept
    assert site.lease(study)[0] == "node-a"
    assert a.resume(only_server=True) == 1  # the only server of its index is starting
    assert site.lease(study) == (None, None)
    assert a.settle() == [study]
