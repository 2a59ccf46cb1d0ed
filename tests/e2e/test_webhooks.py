"""Webhooks of a running ``pacs serve`` (SQLite and PostgreSQL) to a receiver on 127.0.0.1:
each change is POSTed as its ``/api/changes`` entry, signed with HMAC-SHA256; while the
receiver answers 500, redirects, or refuses connections, deliveries are retried with
backoff, and once it is back every change arrives at least once, and a study's later change
is never posted before its earlier one was answered 2xx."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.server import PacsServer, free_port
from tests.support.wait import until

SECRET = "webhook-test-secret"
MAX_BODY = 1 << 16


@dataclass
class Attempt:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def change(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A small HTTP server recording every POST; ``mode``: ok (200), fail (500), redirect
    (302 elsewhere). :meth:`stop` closes its socket: connections are refused until
    :meth:`start` listens again on the same port."""

    port: int = field(default_factory=free_port)
    mode: str = "ok"
    attempts: list[Attempt] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # requests that were not a POST
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = min(int(self.headers.get("Content-Length", "0")), MAX_BODY)
                body = self.rfile.read(length)
                status = {"ok": 200, "fail": 500, "redirect": 302}[receiver.mode]
                with receiver.lock:
                    receiver.attempts.append(
                        Attempt(self.path, dict(self.headers.items()), body, status))
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self) -> None:  # noqa: N802
                with receiver.lock:
                    receiver.others.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def seen(self, path: str, *, delivered_only: bool = False) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.path == path
                    and (not delivered_only or 200 <= a.status < 300)]


@dataclass
class Setup:
    server: PacsServer
    receiver: Receiver
    workdir: Path
    http: httpx.Client

    def store(self, study: str, *numbers: int) -> None:
        dcmtk.store_datasets(self.server.dimse_port, [
            ct_instance(PatientID=f"WH-{study[-6:]}", StudyInstanceUID=study, InstanceNumber=n)
            for n in numbers], workdir=self.workdir)

    def feed(self) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.server.base_url}/api/changes",
                               params={"since": 0, "limit": 1000})
        assert answer.status_code == 200
        changes: list[dict[str, Any]] = answer.json()["changes"]
        return changes

    def deliveries(self) -> list[Any]:
        with self.server.services() as services, services.index.unit_of_work() as repository:
            return repository.changes.deliveries(limit=1000)


@pytest.fixture
def setup(database_url: str, tmp_path: Path) -> Iterator[Setup]:
    receiver = Receiver()
    receiver.start()
    base = f"http://127.0.0.1:{receiver.port}"
    server = PacsServer(
        data_dir=tmp_path / "data", database_url=database_url,
        extra_args=["--stable-seconds", "3600", "--webhook", f"{base}/all",
                    "--webhook", f"{base}/rejections,rejected"],
        start_env={"PACS_WEBHOOK_SECRET": SECRET, "PACS_WEBHOOK_RETRY_SECONDS": "0.1",
                   "PACS_WEBHOOK_RETRY_MAX_SECONDS": "1"},
    ).start()
    try:
        with httpx.Client(timeout=60) as http:
            yield Setup(server, receiver, tmp_path, http)
    finally:
        server.stop()
        receiver.stop()


def _signed(attempt: Attempt) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), attempt.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(attempt.headers.get("X-Pacs-Signature", ""), expected)


def _in_order_per_study(attempts: list[Attempt], wanted: list[dict[str, Any]]) -> None:
    """No change of a study is posted before every earlier change of that study (that this
    webhook wants) was answered 2xx."""
    by_study: dict[str, list[int]] = {}
    for change in wanted:
        by_study.setdefault(change["StudyInstanceUID"], []).append(change["seq"])
    delivered: set[int] = set()
    for attempt in attempts:
        change = attempt.change
        earlier = [s for s in by_study[change["StudyInstanceUID"]] if s < change["seq"]]
        assert set(earlier) <= delivered, (change, sorted(delivered))
        if 200 <= attempt.status < 300:
            delivered.add(change["seq"])


def test_every_change_arrives_signed_in_order_per_study_across_an_outage(setup: Setup) -> None:
    receiver = setup.receiver
    first, second = make_uid("wh", "a"), make_uid("wh", "b")
    setup.store(first, 1, 2)

    def all_delivered() -> list[dict[str, Any]] | None:
        feed = setup.feed()
        seqs = {a.change["seq"] for a in receiver.seen("/all", delivered_only=True)}
        return feed if feed and seqs >= {c["seq"] for c in feed} else None

    feed = until("the first changes delivered", all_delivered)
    posted = receiver.seen("/all")
    by_seq = {c["seq"]: c for c in feed}
    for attempt in posted:  # the body is the feed's entry, signed
        assert attempt.change == by_seq[attempt.change["seq"]]
        assert attempt.headers["Content-Type"] == "application/json"
        assert attempt.headers["X-Pacs-Event"] == attempt.change["event"]
        assert _signed(attempt)

    # the receiver fails: 500s are retried
    receiver.mode = "fail"
    setup.store(first, 3, 4)
    setup.store(second, 1)
    until("a change posted again after a 500", lambda: any(
        n > 1 for n in _counts(receiver.seen("/all")).values()))
    # a redirect is not followed and counts as a failure
    receiver.mode = "redirect"
    until("a 302 answered", lambda: any(a.status == 302 for a in receiver.seen("/all")))
    until("a delivery failed on the redirect", lambda: any(
        d.last_error == "answered HTTP 302" for d in setup.deliveries()))
    # the receiver is down: connections are refused
    receiver.stop()
    answer = setup.http.post(f"{setup.server.base_url}/api/studies/{second}/reject",
                             json={"reason": "webhook test"})
    assert answer.status_code == 200, answer.text
    until("a delivery failed on a refused connection", lambda: any(
        d.last_error == "connection refused" and d.attempts >= 2
        for d in setup.deliveries()))
    # back: everything arrives
    receiver.mode = "ok"
    receiver.start()
    feed = until("every change delivered after the outage", all_delivered)
    rejections = [c for c in feed if c["event"] == "rejected"]
    until("the rejection delivered to the second webhook", lambda: [
        a.change["seq"] for a in receiver.seen("/rejections", delivered_only=True)] == [
        c["seq"] for c in rejections])

    assert [c["event"] for c in feed].count("stored") == 5
    assert rejections and rejections[0]["StudyInstanceUID"] == second
    assert receiver.others == []  # the redirect was never followed
    for path, wanted in (("/all", feed), ("/rejections", rejections)):
        attempts = receiver.seen(path)
        assert all(_signed(a) for a in attempts)
        assert {a.change["seq"] for a in attempts} == {c["seq"] for c in wanted}
        _in_order_per_study(attempts, wanted)
    until("every delivery done", lambda: all(d.state == "done" for d in setup.deliveries()))


def _counts(attempts: list[Attempt]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for attempt in attempts:
        seq = attempt.change["seq"]
        counts[seq] = counts.get(seq, 0) + 1
    return counts
