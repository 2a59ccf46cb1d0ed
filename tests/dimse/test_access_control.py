"""DIMSE access control against DCMTK peers (``TCP_NODELAY=1``, ``-aet``/``-aec``): a real
``pacs serve --dimse-access registered`` with a worker process, AEs registered by ``pacs ae
add`` and by ``--peer``/``--modality``.

Unknown callers and wrong called titles get A-ASSOCIATE-RJ, in whichever process serves them;
a registered AE uses only its services (a modality stores, its C-GET and C-FIND are refused with
an Error Comment, nothing sent); a title registered for 127.0.0.2 is refused from 127.0.0.1
and served from 127.0.0.2 (DCMTK cannot pick its source address: it connects through a
loopback relay whose side of the server's connection is bound to 127.0.0.2,
``tests/support/relay.py``); a move destination added while the server runs is used; and
every refusal is in the audit trail.
"""

from __future__ import annotations

import inspect
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.acse import ACSE
from pynetdicom.association import Association

from tests.factories.datasets import ct_instance, make_uid, write_part10
from tests.support import dcmtk
from tests.support.relay import Relay
from tests.support.server import PacsServer
from tests.support.wait import until

STUDY = make_uid("access", "study")
REJECTED_CALLING = ("Association Rejected", "Result: Rejected Permanent, Source: Service User",
                    "Reason: Calling AE Title Not Recognized")
REJECTED_CALLED = ("Association Rejected", "Result: Rejected Permanent, Source: Service User",
                   "Reason: Called AE Title Not Recognized")


@dataclass
class Site:
    server: PacsServer
    peer: dcmtk.Storescp  # --peer PEERDEST=127.0.0.1:port
    root: Path
    files: list[Path]

    @property
    def port(self) -> int:
        return self.server.dimse_port

    def ae(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.server.cli("ae", *args)
        assert result.returncode == 0, result.stderr
        return result

    def audit(self) -> list[Any]:
        with self.server.services() as services:
            return services.workflow.audit_events(limit=500)


def _text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def echo(port: int, aet: str, aec: str = "PACS", host: str = "127.0.0.1"
         ) -> subprocess.CompletedProcess[str]:
    return dcmtk.run("echoscu", "-v", "-aet", aet, "-aec", aec, host, str(port))


def store(port: int, aet: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return dcmtk.run("storescu", "-d", "-aet", aet, "-aec", "PACS", "127.0.0.1", str(port),
                     *map(str, files))


def find(port: int, aet: str, workdir: Path, *keys: str, host: str = "127.0.0.1"
         ) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    out = workdir / f"find-{aet}-{len(list(workdir.glob('find-*')))}"
    out.mkdir(parents=True)
    args = ["-d", "-S", "-aet", aet, "-aec", "PACS", "-X", "-od", str(out)]
    for key in keys or ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"):
        args += ["-k", key]
    result = dcmtk.run("findscu", *args, host, str(port))
    return result, sorted(out.glob("rsp*.dcm"))


def get(port: int, aet: str, workdir: Path) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    out = workdir / f"get-{aet}-{len(list(workdir.glob('get-*')))}"
    out.mkdir(parents=True)
    result = dcmtk.run("getscu", "-d", "-S", "-aet", aet, "-aec", "PACS", "-od", str(out),
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                       "127.0.0.1", str(port))
    return result, sorted(p for p in out.rglob("*") if p.is_file())


def move(port: int, aet: str, destination: str) -> subprocess.CompletedProcess[str]:
    return dcmtk.run("movescu", "-d", "-S", "-aet", aet, "-aec", "PACS", "-aem", destination,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                     "127.0.0.1", str(port))


def status(result: subprocess.CompletedProcess[str]) -> list[int]:
    """The Status (0000,0900) of every response DCMTK printed (-d)."""
    return [int(value, 16) for value in
            re.findall(r"DIMSE Status\s*: 0x([0-9A-Fa-f]{4})", _text(result))]


def comments(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The Error Comments (0000,0902) of the responses DCMTK printed (-d)."""
    return [comment.rstrip() for comment in  # LO is padded to an even length
            re.findall(r"\(0000,0902\) LO \[([^\]]*)\]", _text(result))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("access")
    peer = dcmtk.Storescp(root / "peer", ae_title="PEERDEST").start()
    server = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root / 'data' / 'index.sqlite'}",
        extra_args=["--dimse-access", "registered", "--dimse-processes", "2",
                    "--peer", peer.peer, "--modality", "MOD1"],
    )
    for args in (["CT1", "--host", "127.0.0.1", "--allow", "store"],
                 ["VIEWER", "--host", "127.0.0.1", "--allow", "find,get"],
                 ["MOVER", "--host", "localhost", "--allow", "find,move"],
                 ["ONLY2", "--host", "127.0.0.2", "--allow", "find"]):
        result = server.cli("ae", "add", *args)  # before the server runs: it finds them
        assert result.returncode == 0, result.stderr
    folder = root / "files"
    folder.mkdir()
    files = [write_part10(ct_instance(StudyInstanceUID=STUDY, PatientID="P-ACCESS",
                                      InstanceNumber=n), folder / f"{n}.dcm") for n in (1, 2)]
    try:
        server.start()
        stored = store(server.dimse_port, "MOD1", files)  # --modality: may store
        assert status(stored) == [0, 0], _text(stored)
        yield Site(server, peer, root, files)
    finally:
        server.stop()
        peer.stop()


def test_unknown_calling_ae_is_rejected_by_every_process(site: Site) -> None:
    # round robin over the listening process and its worker: each gets two of them
    results = [echo(site.port, "NOBODY") for _ in range(4)]
    results.append(store(site.port, "NOBODY", site.files[:1]))
    results.append(find(site.port, "NOBODY", site.root)[0])

    for result in results:
        assert result.returncode != 0
        assert all(line in _text(result) for line in REJECTED_CALLING), _text(result)
    rejecting = set(re.findall(r"\[pid (\d+)\] pacs\.dimse\.handlers: association from "
                               r"NOBODY at 127\.0\.0\.1 rejected", site.server.log()))
    assert len(rejecting) == 2  # the listening process and the worker both logged theirs
    assert echo(site.port, "CT1").returncode == 0  # the same, registered: C-ECHO is allowed


def test_a_wrong_called_ae_title_is_rejected(site: Site) -> None:
    for _ in range(2):
        result = echo(site.port, "CT1", aec="NOT-PACS")
        assert result.returncode != 0
        assert all(line in _text(result) for line in REJECTED_CALLED), _text(result)
    # an unknown caller is told about its own title, not about the called one
    assert all(line in _text(echo(site.port, "NOBODY", aec="NOT-PACS"))
               for line in REJECTED_CALLING)


def test_a_modality_may_store_but_not_get_find_or_move(site: Site) -> None:
    stored = store(site.port, "CT1", [write_part10(
        ct_instance(PatientID="P-CT1"), site.root / "ct1.dcm")])
    assert status(stored) == [0x0000], _text(stored)

    got, files = get(site.port, "CT1", site.root)
    assert status(got) == [0xC124]
    assert comments(got) == ["calling AE 'CT1' may not C-GET"]
    assert files == []  # nothing sent
    assert "Received C-STORE Request" not in _text(got)

    found, responses = find(site.port, "CT1", site.root)
    assert status(found) == [0xC124] and responses == []
    assert comments(found) == ["calling AE 'CT1' may not C-FIND"]

    moved = move(site.port, "CT1", "PEERDEST")
    assert status(moved) == [0xC124]
    assert comments(moved) == ["calling AE 'CT1' may not C-MOVE"]


def test_a_viewer_may_find_and_get_but_not_store(site: Site) -> None:
    found, responses = find(site.port, "VIEWER", site.root)
    assert status(found)[-1] == 0x0000 and len(responses) == 1, _text(found)

    got, files = get(site.port, "VIEWER", site.root)
    assert status(got)[-1] == 0x0000, _text(got)
    assert len(files) == 2

    refused = ct_instance(PatientID="P-VIEWER-PUSH")
    stored = store(site.port, "VIEWER", [write_part10(refused, site.root / "viewer.dcm")])
    assert status(stored) == [0x0124], _text(stored)  # Refused: Not Authorized
    assert comments(stored) == ["calling AE 'VIEWER' may not C-STORE"]
    _, matches = find(site.port, "VIEWER", site.root, "QueryRetrieveLevel=IMAGE",
                      f"StudyInstanceUID={refused.StudyInstanceUID}", "SOPInstanceUID")
    assert matches == []
    with site.server.services() as services:
        assert services.consistency.check(verify_hashes=False).orphans == []  # no file kept


def test_the_calling_address_must_be_listed(site: Site) -> None:
    rejected = find(site.port, "ONLY2", site.root)[0]
    assert all(line in _text(rejected) for line in REJECTED_CALLING), _text(rejected)

    relay = Relay(("127.0.0.1", site.port), source="127.0.0.2")
    try:
        found, responses = find(relay.port, "ONLY2", site.root)
        assert status(found)[-1] == 0x0000 and len(responses) == 1, _text(found)
        from_two = echo(relay.port, "CT1")  # registered for 127.0.0.1 only
        assert all(line in _text(from_two) for line in REJECTED_CALLING), _text(from_two)
        assert {host for host, _ in relay.sources} == {"127.0.0.2"}
    finally:
        relay.close()


def test_a_move_destination_added_while_running_is_used(site: Site) -> None:
    ws = dcmtk.Storescp(site.root / "ws2", ae_title="WS2").start()
    try:
        unknown = move(site.port, "MOVER", "WS2")
        assert status(unknown) == [0xA801], _text(unknown)

        site.ae("add", "WS2", "--host", "127.0.0.1", "--port", str(ws.port), "--allow", "find",
                "--move-destination")

        def moved() -> bool:  # each process sees it within the registry's TTL (2 s)
            return status(move(site.port, "MOVER", "WS2"))[-1:] == [0x0000]

        until("WS2 is a move destination", moved)
        assert len(ws.files()) >= 2

        site.ae("remove", "WS2")
        until("WS2 is gone", lambda: status(move(site.port, "MOVER", "WS2")) == [0xA801])
    finally:
        ws.stop()


def test_peer_and_modality_flags_feed_the_registry(site: Site) -> None:
    listed = site.ae("list").stdout
    rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
    assert rows["PEERDEST"][1:6] == ["127.0.0.1", str(site.peer.port), "find,move,get", "yes",
                                     "peer-flag"]
    assert rows["MOD1"][1:6] == ["*", "-", "store", "no", "modality-flag"]

    site.peer.clear()
    moved = move(site.port, "MOVER", "PEERDEST")
    assert status(moved)[-1] == 0x0000, _text(moved)
    assert len(site.peer.files()) == 2
    found, responses = find(site.port, "PEERDEST", site.root)  # a peer may query
    assert status(found)[-1] == 0x0000 and len(responses) == 1
    found, responses = find(site.port, "MOD1", site.root)  # a modality may not
    assert status(found) == [0xC124] and responses == []


def test_refusals_and_denials_are_audited(site: Site) -> None:
    echo(site.port, "INTRUDER")
    echo(site.port, "CT1", aec="ELSEWHERE")
    find(site.port, "ONLY2", site.root)
    get(site.port, "CT1", site.root)

    wanted = {
        ("dimse:INTRUDER@127.0.0.1", "association-rejected", "calling AE title not registered"),
        ("dimse:CT1@127.0.0.1", "association-rejected", "called AE title not recognised"),
        ("dimse:ONLY2@127.0.0.1", "association-rejected",
         "calling AE title not registered for this address"),
        ("dimse:CT1@127.0.0.1", "permission-denied", "may not C-GET"),
    }

    def written() -> list[Any]:
        events = [e for e in site.audit() if (e.actor, e.action, e.outcome) in wanted]
        return events if {(e.actor, e.action, e.outcome) for e in events} == wanted else []

    events = until("the refusals are in the audit trail", written)
    called = [e for e in events if e.outcome == "called AE title not recognised"]
    # refusals of one kind are folded into one row per flush: its detail names the called
    # title of one of them (an earlier test of this module asks for NOT-PACS as CT1 too)
    assert {e.detail["called_ae_title"] for e in called} <= {"ELSEWHERE", "NOT-PACS"}
    assert called
    assert all(e.detail["count"] >= 1 for e in events)


def test_the_pynetdicom_flow_access_control_relies_on_is_still_there() -> None:
    """``access.py`` rejects from ``EVT_REQUESTED`` as pynetdicom rejects itself: the request
    primitive is set before the event, and negotiation is skipped once the handler rejected."""
    reactor = inspect.getsource(Association.run_reactor)
    requested = reactor.index("evt.EVT_REQUESTED")
    assert reactor.index("self.requestor.primitive =") < requested
    assert reactor.index("not self.is_rejected", requested) < reactor.index(
        "self.acse.negotiate_association()", requested)
    assert list(inspect.signature(ACSE.send_reject).parameters) == [
        "self", "result", "source", "diagnostic"]
    assert "self.assoc.is_rejected = True" in inspect.getsource(ACSE.send_reject)


def test_any_mode_checks_nothing(sqlite_server: PacsServer) -> None:
    """On loopback the default is ``any``: as before, every caller may do everything."""
    result = sqlite_server.cli("ae", "add", "CT1", "--host", "127.0.0.2", "--allow", "store")
    assert result.returncode == 0, result.stderr

    assert echo(sqlite_server.dimse_port, "NOBODY", aec="ANYTHING").returncode == 0
    found, _ = find(sqlite_server.dimse_port, "CT1", sqlite_server.data_dir.parent)
    assert status(found)[-1] == 0x0000, _text(found)
