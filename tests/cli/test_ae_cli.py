"""``pacs ae add|list|remove`` run as a user runs them: entries land in the index (the registry
a server reads), the list is a table, mistakes exit 2 with one line, an unknown title exits 1,
and every change is in the audit trail as ``cli:ae``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacs.services.ae_registry import AeRegistry, Service
from pacs.services.retrieve import Destination
from storage.index import Index


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_add_list_remove(tmp_path: Path, database_url: str) -> None:
    where = ("--data-dir", str(tmp_path / "data"), "--database-url", database_url)

    ct = pacs("ae", "add", "CT1", "--host", "127.0.0.2, ct.example", "--allow", "store", *where)
    assert ct.returncode == 0, ct.stderr
    assert ct.stdout.strip() == "added: CT1 (hosts 127.0.0.2, ct.example; allow store)"
    ws = pacs("ae", "add", "WS", "--host", "127.0.0.1", "--port", "11113",
              "--allow", "find,move", "--move-destination", *where)
    assert ws.returncode == 0, ws.stderr
    assert "move destination at 127.0.0.1:11113" in ws.stdout
    echo = pacs("ae", "add", "ECHO ONLY", "--host", "*", *where)
    assert echo.returncode == 0 and "allow C-ECHO only" in echo.stdout

    index = Index(database_url)
    try:
        registry = AeRegistry(index=index)
        assert registry.admit("CT1", "127.0.0.2").services == {Service.STORE}
        assert registry.admit("CT1", "127.0.0.1").refused is not None
        assert registry.destination("WS") == Destination("WS", "127.0.0.1", 11113)

        listed = pacs("ae", "list", *where)
        assert listed.returncode == 0, listed.stderr
        header, *lines = listed.stdout.splitlines()
        assert header.split() == ["AE", "TITLE", "HOSTS", "PORT", "ALLOW", "MOVE",
                                  "DESTINATION", "SOURCE", "CREATED"]
        rows = [line.split("  ") for line in lines]
        cells = [[cell.strip() for cell in row if cell.strip()] for row in rows]
        assert [row[:6] for row in cells] == [
            ["CT1", "127.0.0.2,ct.example", "-", "store", "no", "cli"],
            ["ECHO ONLY", "*", "-", "-", "no", "cli"],
            ["WS", "127.0.0.1", "11113", "find,move", "yes", "cli"],
        ]

        removed = pacs("ae", "remove", "WS", *where)
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.strip() == "removed: WS"
        assert AeRegistry(index=index).destination("WS") is None

        unknown = pacs("ae", "remove", "WS", *where)
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == "pacs: error: no AE titled 'WS'"

        with index.unit_of_work() as repository:
            events = [(e.actor, e.action, e.detail["ae_title"])
                      for e in reversed(repository.audit.events(limit=20))]
        assert events == [("cli:ae", "ae-add", "CT1"), ("cli:ae", "ae-add", "WS"),
                          ("cli:ae", "ae-add", "ECHO ONLY"), ("cli:ae", "ae-remove", "WS")]
    finally:
        index.dispose()


@pytest.mark.parametrize(("args", "message"), [
    (("CT1", "--host", "10.0.0.1", "--allow", "store,echo"), "no service 'echo'"),
    (("CT1", "--host", "10.0.0.1/8"), "is not a network"),
    (("CT1", "--host", "not a host"), "not an IP address"),
    (("A_TITLE_LONGER_THAN_16", "--host", "*"), "1 to 16"),
    (("CT1", "--host", "10.0.0.1", "--move-destination"), "needs a port"),
    (("CT1", "--host", "10.0.0.1", "--port", "70000"), "out of range"),
    (("TAKEN", "--host", "*"), "'TAKEN' is registered already"),
])
def test_mistakes_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...],
                                        message: str) -> None:
    where = ("--data-dir", str(tmp_path / "data"))
    assert pacs("ae", "add", "TAKEN", "--host", "*", *where).returncode == 0

    result = pacs("ae", "add", *args, *where)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pacs: error: ") and message in lines[0]
    assert result.stdout == ""
