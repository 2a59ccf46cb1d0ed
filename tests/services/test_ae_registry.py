"""The AE registry on a real index (SQLite and PostgreSQL): entries are validated, audited and
looked up from a snapshot that follows the index within its TTL; the ``--peer`` and
``--modality`` flags feed the same table; the default DIMSE access follows the bind address."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from pacs.services.ae_registry import (
    UNKNOWN_AE,
    UNLISTED_ADDRESS,
    AeRegistry,
    AeRegistryError,
    Service,
)
from pacs.services.errors import OutOfResources
from pacs.services.retrieve import Destination
from pacs.settings import DimseAccess, Settings
from storage.index import Index

T0 = dt.datetime(2026, 12, 8, 9, 0, tzinfo=dt.UTC)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


def _registry(index: Index, ticks: Ticks, **names: list[str]) -> AeRegistry:
    def resolve(name: str) -> list[str]:
        if name not in names:
            raise OSError(f"{name}: no such host")
        return names[name]

    return AeRegistry(index=index, clock=lambda: T0, monotonic=ticks, resolve=resolve)


@pytest.fixture
def registry(index: Index, ticks: Ticks) -> AeRegistry:
    return _registry(index, ticks, **{"ct.example": ["10.9.8.7", "fd00::7"]})


def _audit(index: Index) -> list[tuple[str, str, str, dict[str, Any]]]:
    with index.unit_of_work() as repository:
        return [(e.actor, e.action, e.outcome, e.detail)
                for e in reversed(repository.audit.events(limit=100))
                if e.action.startswith("ae-")]


def test_add_list_remove_are_audited(registry: AeRegistry, index: Index) -> None:
    record = registry.add(" CT1 ", hosts=["10.0.0.5", "[fd00::5]", "CT.example."],
                          allow=["store", "STORE"], who="token:admin")
    viewer = registry.add("WS", hosts=["10.1.0.0/16"], port=11113, allow=["get", "find", "move"],
                          move_destination=False)

    assert record.ae_title == "CT1" and record.source == "cli" and record.created_at == T0
    assert record.hosts == ("10.0.0.5", "fd00::5", "ct.example")
    assert record.services == ("store",) and record.port is None
    assert viewer.services == ("find", "move", "get")  # the canonical order
    assert [r.ae_title for r in registry.list()] == ["CT1", "WS"]
    assert registry.remove("WS", who="token:admin") is True
    assert registry.remove("WS") is False
    assert [r.ae_title for r in registry.list()] == ["CT1"]
    assert _audit(index) == [
        ("token:admin", "ae-add", "added", {
            "ae_title": "CT1", "hosts": ["10.0.0.5", "fd00::5", "ct.example"], "port": None,
            "allow": ["store"], "move_destination": False, "source": "cli"}),
        ("cli", "ae-add", "added", {
            "ae_title": "WS", "hosts": ["10.1.0.0/16"], "port": 11113,
            "allow": ["find", "move", "get"], "move_destination": False, "source": "cli"}),
        ("token:admin", "ae-remove", "removed", {
            "ae_title": "WS", "hosts": ["10.1.0.0/16"], "port": 11113,
            "allow": ["find", "move", "get"], "move_destination": False, "source": "cli"}),
    ]


@pytest.mark.parametrize(("title", "fields", "message"), [
    ("", {"hosts": ["*"]}, "1 to 16"),
    ("SEVENTEEN_LETTERS", {"hosts": ["*"]}, "1 to 16"),
    ("BACK\\SLASH", {"hosts": ["*"]}, "without backslash"),
    ("TAB\tAE", {"hosts": ["*"]}, "printable"),
    ("CT1", {"hosts": []}, "at least one host"),
    ("CT1", {"hosts": ["*", "10.0.0.1"]}, "cannot be combined"),
    ("CT1", {"hosts": ["10.0.0.1/8"]}, "is not a network"),
    ("CT1", {"hosts": ["ct_1.example"]}, "not an IP address"),
    ("CT1", {"hosts": ["-ct.example"]}, "not an IP address"),
    ("CT1", {"hosts": [f"10.0.0.{n}" for n in range(40)]}, "at most 32 hosts"),
    ("CT1", {"hosts": ["10.0.0.1"], "port": 0}, "out of range"),
    ("CT1", {"hosts": ["10.0.0.1"], "allow": ["store", "echo"]}, "no service 'echo'"),
    ("CT1", {"hosts": ["10.0.0.1"], "move_destination": True}, "needs a port"),
    ("CT1", {"hosts": ["*"], "port": 104, "move_destination": True}, "not * or a network"),
    ("CT1", {"hosts": ["10.0.0.0/24"], "port": 104, "move_destination": True}, "not * or a"),
])
def test_invalid_entries_are_refused_with_the_reason(
    registry: AeRegistry, index: Index, title: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(AeRegistryError) as raised:
        registry.add(title, **fields)

    assert message in str(raised.value)
    assert registry.list() == [] and _audit(index) == []


def test_a_title_is_registered_once(registry: AeRegistry) -> None:
    registry.add("CT1", hosts=["10.0.0.5"], allow=["store"])
    registry.sync_flags([Destination("WS", "10.0.0.9", 104)], [])

    with pytest.raises(AeRegistryError, match="'CT1' is registered already: remove it first"):
        registry.add("CT1", hosts=["*"])
    with pytest.raises(AeRegistryError, match=r"registered already \(by --peer\)"):
        registry.add("WS", hosts=["*"])
    assert [r.hosts for r in registry.list()] == [("10.0.0.5",), ("10.0.0.9",)]


def test_admit_checks_the_title_then_the_address(registry: AeRegistry) -> None:
    registry.add("CT1", hosts=["10.0.0.5", "ct.example"], allow=["store"])
    registry.add("WS", hosts=["10.1.0.0/16", "fd00:1::/64"], allow=["find", "get"])
    registry.add("ANY", hosts=["*"])
    registry.add("DOWN", hosts=["nowhere.example"], allow=["store"])

    assert registry.admit("CT1", "10.0.0.5").services == {Service.STORE}
    assert registry.admit("CT1 ", "10.9.8.7").admitted  # the name's addresses
    assert registry.admit("CT1", "fd00::7").admitted
    assert registry.admit("CT1", "::ffff:10.0.0.5").admitted  # a dual-stack listener's view
    assert registry.admit("CT1", "10.0.0.6").refused == UNLISTED_ADDRESS
    assert registry.admit("ct1", "10.0.0.5").refused == UNKNOWN_AE  # titles are exact
    assert registry.admit("NOBODY", "10.0.0.5").refused == UNKNOWN_AE
    assert registry.admit("WS", "10.1.200.3").services == {Service.FIND, Service.GET}
    assert registry.admit("WS", "fd00:1::42").admitted
    assert registry.admit("WS", "10.2.0.1").refused == UNLISTED_ADDRESS
    assert registry.admit("ANY", "192.0.2.77").services == frozenset()  # C-ECHO only
    assert registry.admit("DOWN", "10.0.0.5").refused == UNLISTED_ADDRESS  # no address


def test_destinations_are_move_destinations_with_a_port(registry: AeRegistry) -> None:
    registry.add("WS", hosts=["ws.example", "10.0.0.0/8"], port=11113, allow=["find"],
                 move_destination=True)
    registry.add("CT1", hosts=["10.0.0.5"], port=104, allow=["store"])

    assert registry.destination("WS") == Destination("WS", "ws.example", 11113)
    assert registry.destination("CT1") is None  # not a move destination
    assert registry.destination("NOBODY") is None


def test_flags_feed_the_registry_and_follow_the_flags(
    registry: AeRegistry, index: Index, ticks: Ticks
) -> None:
    registry.add("CT9", hosts=["10.0.0.9"], allow=["store"])

    kept = registry.sync_flags(
        [Destination("WS", "10.0.0.7", 11113), Destination("BOTH", "10.0.0.8", 104)],
        ["MOD1", "BOTH", "CT9"], who="pacs:serve")

    assert kept == ["CT9"]  # pacs ae add's entry: a flag changes nothing
    entries = {r.ae_title: r for r in registry.list()}
    assert {t: (r.hosts, r.port, r.services, r.move_destination, r.source)
            for t, r in entries.items()} == {
        "BOTH": (("10.0.0.8",), 104, ("store", "find", "move", "get"), True, "peer-flag"),
        "CT9": (("10.0.0.9",), None, ("store",), False, "cli"),
        "MOD1": (("*",), None, ("store",), False, "modality-flag"),
        "WS": (("10.0.0.7",), 11113, ("find", "move", "get"), True, "peer-flag"),
    }
    assert registry.destination("WS") == Destination("WS", "10.0.0.7", 11113)
    assert registry.admit("WS", "10.0.0.7").services == {Service.FIND, Service.MOVE,
                                                         Service.GET}
    assert registry.admit("WS", "10.0.0.99").refused == UNLISTED_ADDRESS
    assert registry.admit("MOD1", "192.0.2.1").services == {Service.STORE}

    # the next start: WS moved, BOTH and MOD1 no longer given
    registry.sync_flags([Destination("WS", "10.0.0.70", 11114)], [], who="pacs:serve")

    assert [(r.ae_title, r.hosts, r.port) for r in registry.list()] == [
        ("CT9", ("10.0.0.9",), None), ("WS", ("10.0.0.70",), 11114)]
    assert registry.destination("WS") == Destination("WS", "10.0.0.70", 11114)
    assert registry.admit("MOD1", "192.0.2.1").refused == UNKNOWN_AE
    flagged = [(actor, action, outcome, detail["ae_title"])
               for actor, action, outcome, detail in _audit(index) if actor == "pacs:serve"]
    assert sorted(flagged[:3]) == [("pacs:serve", "ae-add", "added", "BOTH"),
                                   ("pacs:serve", "ae-add", "added", "MOD1"),
                                   ("pacs:serve", "ae-add", "added", "WS")]
    assert sorted(flagged[3:]) == [
        ("pacs:serve", "ae-remove", "removed (flag no longer given)", "BOTH"),
        ("pacs:serve", "ae-remove", "removed (flag no longer given)", "MOD1"),
        ("pacs:serve", "ae-update", "updated", "WS"),
    ]

    # the same flags again: nothing to change, nothing audited
    registry.sync_flags([Destination("WS", "10.0.0.70", 11114)], [], who="pacs:serve")
    assert len([e for e in _audit(index) if e[0] == "pacs:serve"]) == 6


def test_changes_elsewhere_are_seen_within_the_ttl(index: Index, ticks: Ticks) -> None:
    """Two registries on one index stand for two processes (or replicas)."""
    here = _registry(index, ticks)
    there = _registry(index, ticks)
    here.add("CT1", hosts=["10.0.0.5"], allow=["store"])
    assert there.admit("CT1", "10.0.0.5").admitted  # its first look: loaded now

    here.remove("CT1")
    here.add("WS", hosts=["10.0.0.7"], port=104, move_destination=True)

    assert here.admit("CT1", "10.0.0.5").refused == UNKNOWN_AE  # at once where changed
    assert there.admit("CT1", "10.0.0.5").admitted  # the other's snapshot is young...
    ticks.now += 1.75
    assert there.destination("WS") is None
    ticks.now += 0.25  # ...and at 2 s it is read again
    assert there.admit("CT1", "10.0.0.5").refused == UNKNOWN_AE
    assert there.destination("WS") == Destination("WS", "10.0.0.7", 104)


def test_names_are_resolved_again_at_each_reload(index: Index, ticks: Ticks) -> None:
    addresses = {"ct.example": ["10.0.0.5"]}
    registry = AeRegistry(index=index, monotonic=ticks, resolve=lambda name: addresses[name])
    registry.add("CT1", hosts=["ct.example"], allow=["store"])
    registry.add("WS", hosts=["10.0.0.7"], allow=["find"])
    assert registry.admit("CT1", "10.0.0.5").admitted

    addresses["ct.example"] = ["10.0.0.6"]  # the modality moved; its DNS entry followed
    ticks.now += 2.0

    assert registry.admit("CT1", "10.0.0.6").admitted
    assert registry.admit("CT1", "10.0.0.5").refused == UNLISTED_ADDRESS
    assert registry.admit("WS", "10.0.0.7").admitted  # kept from the last load, unchanged


def test_a_flood_of_unknown_callers_reads_the_index_once_per_ttl(
    registry: AeRegistry, index: Index, ticks: Ticks
) -> None:
    registry.add("CT1", hosts=["10.0.0.5"], allow=["store"])
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "application_entities" in statement:
            reads.append(statement)

    event.listen(index.engine, "before_cursor_execute", count)
    try:
        for n in range(2000):
            assert not registry.admit(f"SCAN{n}", "192.0.2.66").admitted
        assert len(reads) == 1
        ticks.now += 2.0
        for n in range(2000):
            registry.admit(f"SCAN{n}", "192.0.2.66")
        assert len(reads) == 2
    finally:
        event.remove(index.engine, "before_cursor_execute", count)


def test_an_unreadable_index_keeps_the_last_snapshot_or_refuses(
    index: Index, ticks: Ticks, tmp_path: Path
) -> None:
    registry = _registry(index, ticks)
    registry.add("CT1", hosts=["10.0.0.5"], allow=["store"])
    assert registry.admit("CT1", "10.0.0.5").admitted
    unreadable = Index(f"sqlite:///{tmp_path}")  # a folder: cannot be opened
    try:
        registry.index = unreadable
        ticks.now += 5
        assert registry.admit("CT1", "10.0.0.5").admitted  # the entries loaded before

        never_loaded = _registry(unreadable, ticks)
        with pytest.raises(OutOfResources, match="AE registry cannot be read"):
            never_loaded.admit("CT1", "10.0.0.5")
    finally:
        unreadable.dispose()


def test_entries_survive_in_the_table_as_stored(registry: AeRegistry, index: Index) -> None:
    registry.add("WS", hosts=["10.0.0.7"], port=104, allow=["find"], move_destination=True)

    with index.engine.connect() as connection:
        row = connection.execute(text(
            "SELECT ae_title, port, move_destination, source FROM application_entities")).one()
    assert tuple(row) == ("WS", 104, True, "cli")


@pytest.mark.parametrize(("host", "expected"), [
    ("0.0.0.0", DimseAccess.REGISTERED),
    ("::", DimseAccess.REGISTERED),
    ("192.0.2.2", DimseAccess.REGISTERED),
    ("pacs.example", DimseAccess.REGISTERED),
    ("127.0.0.1", DimseAccess.ANY),
    ("127.0.0.2", DimseAccess.ANY),
    ("::1", DimseAccess.ANY),
    ("localhost", DimseAccess.ANY),
])
def test_default_dimse_access_follows_the_bind_address(
    host: str, expected: DimseAccess
) -> None:
    assert Settings(dimse_host=host).effective_dimse_access is expected


def test_dimse_access_given_wins() -> None:
    given_any = Settings(dimse_host="0.0.0.0", dimse_access=DimseAccess.ANY)
    given_registered = Settings(dimse_access=DimseAccess.REGISTERED)

    assert given_any.effective_dimse_access is DimseAccess.ANY
    assert given_registered.effective_dimse_access is DimseAccess.REGISTERED
