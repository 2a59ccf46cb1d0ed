"""QIDO-RS with and without a bearer token (issue 13: within 1 ms of no auth at the median).

    python -m bench.auth                                  # 10,000 instances, SQLite
    python -m bench.auth --scale 100000 --reps 1000 --targets sqlite,postgresql

One index, filled with bench.query's synthetic population (``--scale`` instances, through the
ingest service's index path), and two ``pacs serve`` on it, started together: one with
``--auth none``, one with ``--auth required``, to which the client sends ``Authorization:
Bearer`` with a viewer token (``pacs token create``). The same QIDO-RS requests (a study by
PatientID, a wildcard PatientName with ``limit=100``, a study's series) alternate between
the two, request by request, each server on its own keep-alive connection
(``http.client``, TCP_NODELAY), so the machine's other load falls on both alike; the first
requests of each are warm-up. Reported per query: the medians and p95s, and the difference
of the medians (with the bearer token minus without); the target is at most 1 ms.

What a bearer token costs per request: the token's row read by its lookup id and one SHA-256
compared in constant time (:meth:`pacs.services.auth.TokenService.authenticate`), and a
write of ``last_used_at`` at most once a minute; no cache in the process, so a revocation
takes effect on the next request of every server. Both servers audit every query (the
default); the token's name in the audit row costs nothing measurable.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from bench.dicomweb import QIDO_JSON, Client
from bench.ingest import DEFAULT_POSTGRES, REPO, RESULTS_DIR, log, pacs_command, server_env
from bench.orthanc import LOOPBACK, free_port, http_ok, start_process, stop_process, wait_until
from bench.query import (
    INSTANCES_PER_STUDY,
    StudySpec,
    _database,
    _percentile,
    fill_pacs,
    population,
    probes,
)

RESULTS_FILE = REPO / "bench" / "RESULTS-auth.md"
GOAL_MS = 1.0
WARM_UP = 5


@dataclass
class Server:
    """``pacs serve`` with ``--auth`` as given, on an existing index."""

    command: list[str]
    work: Path
    data_dir: Path
    database_url: str
    auth: str
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.http_port = free_port()
        argv = [*self.command, "serve", "--data-dir", str(self.data_dir),
                "--dimse-port", str(free_port()), "--http-port", str(self.http_port),
                "--http-host", LOOPBACK, "--database-url", self.database_url,
                "--dimse-processes", "1", "--auth", self.auth]
        self.proc = start_process(argv, self.work / f"pacs-auth-{self.auth}.log",
                                  env=server_env(), cwd=REPO)
        wait_until(lambda: http_ok(f"http://{LOOPBACK}:{self.http_port}/health"), self.proc,
                   180, f"pacs serve --auth {self.auth}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class Cell:
    samples: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "bearer": []})
    errors: list[str] = field(default_factory=list)

    def median(self, side: str) -> float | None:
        values = self.samples[side]
        return statistics.median(values) if values else None

    def p95(self, side: str) -> float | None:
        return _percentile(self.samples[side], 0.95)

    @property
    def difference(self) -> float | None:
        bearer, none = self.median("bearer"), self.median("none")
        return None if bearer is None or none is None else bearer - none


def _token(command: list[str], data_dir: Path, database_url: str) -> str:
    made = subprocess.run(
        [*command, "token", "create", "--name", "bench-viewer", "--role", "viewer",
         "--data-dir", str(data_dir), "--database-url", database_url],
        capture_output=True, text=True, cwd=REPO, env=server_env(), timeout=300, check=True)
    (secret,) = [word for word in made.stdout.split() if word.startswith("pacs_")]
    return secret


def queries(scale: int) -> tuple[list[StudySpec], dict[str, list[tuple[str, int]]]]:
    studies = population(max(1, scale // INSTANCES_PER_STUDY))
    base = probes(studies)
    smiths = sum(st.smith for st in studies)
    return studies, {
        "study by PatientID": [
            (f"/dicom-web/studies?PatientID={quote(p.keys['PatientID'])}", p.expected)
            for p in base["pid"]],
        "PatientName=smi*, limit=100": [
            ("/dicom-web/studies?PatientName=smi*&limit=100", min(100, smiths))],
        "a study's series": [
            (f"/dicom-web/studies/{p.keys['StudyInstanceUID']}/series", p.expected)
            for p in base["series"]],
    }


def measure(none: Server, bearer: Server, secret: str,
            asked: dict[str, list[tuple[str, int]]], reps: int) -> dict[str, Cell]:
    clients = {"none": Client(none.http_port), "bearer": Client(bearer.http_port)}
    headers = {"none": dict(QIDO_JSON),
               "bearer": {**QIDO_JSON, "Authorization": f"Bearer {secret}"}}
    cells: dict[str, Cell] = {}
    try:
        for name, rotation in asked.items():
            cell = cells[name] = Cell()
            for number in range(reps + WARM_UP):
                path, expected = rotation[number % len(rotation)]
                for side in (("none", "bearer") if number % 2 else ("bearer", "none")):
                    reply = clients[side].request("GET", path, headers[side])
                    got = len(json.loads(reply.body)) if reply.status == 200 else -1
                    if reply.status != 200 or got != expected:
                        cell.errors.append(f"{side}: HTTP {reply.status}, {got} answers for "
                                           f"{path} (expected {expected})")
                    elif number >= WARM_UP:
                        cell.samples[side].append(reply.ms)
    finally:
        for client in clients.values():
            client.close()
    return cells


def run(target: str, scale: int, reps: int, postgres: str, root: Path) -> dict[str, Cell]:
    command = pacs_command()
    work = root / target
    work.mkdir(parents=True)
    data_dir = work / "data"
    studies, asked = queries(scale)
    with _database(target, postgres, data_dir) as url:
        log(f"{target}: filling the index with {len(studies) * INSTANCES_PER_STUDY:,} instances")
        fill_pacs(url, data_dir, studies)
        secret = _token(command, data_dir, url)
        servers = [Server(command, work, data_dir, url, "none"),
                   Server(command, work, data_dir, url, "required")]
        try:
            for server in servers:
                server.start()
            log(f"{target}: {reps} QIDO-RS requests per query and server, alternating")
            cells = measure(servers[0], servers[1], secret, asked, reps)
        finally:
            for server in servers:
                server.stop()
    for name, cell in cells.items():
        log(f"  {name:32s} none {_ms(cell.median('none'))} ms, bearer "
            f"{_ms(cell.median('bearer'))} ms, difference {_ms(cell.difference, 2)} ms"
            + (f"  ERRORS {len(cell.errors)}: {cell.errors[0]}" if cell.errors else ""))
    return cells


def _ms(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(results: dict[str, dict[str, Cell]], args: argparse.Namespace) -> str:
    lines = [
        "# QIDO-RS with and without a bearer token",
        "",
        f"{_dt.datetime.now():%Y-%m-%d %H:%M}, `python -m bench.auth --scale {args.scale} "
        f"--reps {args.reps} --targets {','.join(results)}`; "
        f"{args.reps} requests per query and server, alternating between the two servers on "
        "one index. Milliseconds, median / p95; the difference is of the medians (target: "
        f"at most {GOAL_MS:g} ms).",
        "",
        "| index | query | no auth | bearer token | difference | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for target, cells in results.items():
        for name, cell in cells.items():
            difference = cell.difference
            met = "met" if difference is not None and difference <= GOAL_MS else "MISSED"
            lines.append(
                f"| {target} | {name} | {_ms(cell.median('none'))} / {_ms(cell.p95('none'))} "
                f"| {_ms(cell.median('bearer'))} / {_ms(cell.p95('bearer'))} "
                f"| {_ms(difference, 2)} | {met if not cell.errors else 'ERRORS'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10_000, help="instances in the index")
    parser.add_argument("--reps", type=int, default=400, help="requests per query and server")
    parser.add_argument("--targets", default="sqlite", help="sqlite, postgresql (comma list)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args(argv)
    targets = ["postgres" if t.strip().startswith("postgres") else t.strip()
               for t in args.targets.split(",") if t.strip()]
    results: dict[str, dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory(prefix="pacs-bench-auth-") as folder:
        for target in targets:
            results[target] = run(target, args.scale, args.reps, args.postgres, Path(folder))
    report = render(results, args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"auth-{_dt.datetime.now():%Y%m%d-%H%M%S}.md").write_text(report)
    print(report)
    failed = any(cell.errors for cells in results.values() for cell in cells.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
