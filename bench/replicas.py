"""Two replicas behind HAProxy against one server: C-STORE throughput on PostgreSQL.

    python -m bench.replicas                    # 2,000 small instances, 4 and 8 associations
    python -m bench.replicas --small 500 --repeat 1

* Targets, alternated within each repetition: ``one`` (one ``pacs serve`` on a fresh
  PostgreSQL database) and ``two`` (two ``pacs serve`` on one fresh database and one data
  folder, HAProxy from Debian in front: TCP round robin, so each storescu association goes to
  the next replica). Every run gets fresh servers, folders and database.
* The client is DCMTK ``storescu`` (TCP_NODELAY=1), N processes at once, one association each,
  on N slices of the corpus (bench/ingest.py's ``send``); the rate is instances / wall time.
* CPU per instance, read from /proc before and after each run: the pacs processes (both
  replicas and their DIMSE workers), PostgreSQL's processes (every ``postgres`` process of the
  machine: nothing else should use it during the run) and HAProxy.
* This machine has two cores, shared by the clients, the replicas, PostgreSQL and HAProxy: two
  replicas cannot be faster here than one that already fills both cores. What a cluster of
  separate machines would do is projected from the CPU figures: each pacs node brings its own
  cores; PostgreSQL's CPU per instance bounds the whole cluster.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import (
    DEFAULT_POSTGRES,
    RESULTS_DIR,
    Corpus,
    Pacs,
    Shape,
    ensure_corpus,
    fresh_database,
    log,
    pacs_command,
    postgres_problem,
    send,
    warm_page_cache,
    write_storescu_profile,
)
from bench.orthanc import cpu_seconds, processes_named

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / "bench" / "RESULTS-replicas.md"
TARGETS = ("one", "two")
CORES = os.cpu_count() or 1


@dataclass
class Run:
    target: str
    associations: int
    instances: int
    seconds: float = 0.0
    pacs_cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    lb_cpu_s: float = 0.0
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    def per_instance_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.instances


@dataclass
class _Ports:
    """What the HAProxy helper needs of a server."""

    dimse_port: int
    http_port: int


def _cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


@contextmanager
def _cluster(target: str, work: Path, postgres: str, tag: str) -> Iterator[
        tuple[int, str, list[int], list[int]]]:
    """Servers for one run: (DIMSE port to send to, called AE, pacs pids, HAProxy pids)."""
    from tests.support.haproxy import Haproxy

    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(postgres, f"pacs_replicas_{tag}"))
        count = 1 if target == "one" else 2
        servers = []
        for n in range(count):
            server = Pacs(work / f"node{n}", pacs_command(), "pacs-postgres", url)
            server.data_dir = work / "shared-data"  # one store for every replica
            server.work.mkdir(parents=True, exist_ok=True)
            server.start()
            stack.callback(server.stop)
            servers.append(server)
        pids = [s.proc.pid for s in servers if s.proc is not None]
        if count == 1:
            yield servers[0].port, servers[0].aet, pids, []
            return
        ports = [_Ports(s.port, _http_port(s)) for s in servers]
        balancer = Haproxy(work / "lb", ports)  # type: ignore[arg-type]
        balancer.start()
        stack.callback(balancer.stop)
        assert balancer.process is not None
        yield balancer.dimse_port, servers[0].aet, pids, [balancer.process.pid]


def _http_port(server: Pacs) -> int:
    assert server.proc is not None
    args = list(server.proc.args)  # type: ignore[arg-type]
    return int(args[args.index("--http-port") + 1])


def run_once(target: str, associations: int, corpus: Corpus, profile: Path, postgres: str,
             root: Path, counter: int) -> Run:
    run = Run(target, associations, len(corpus.files))
    work = root / f"{counter:03d}-{target}-{associations}"
    work.mkdir(parents=True)
    try:
        with _cluster(target, work, postgres, f"{os.getpid()}_{counter}") as (
                port, aet, pids, lb):
            os.sync()
            db = processes_named("postgres")
            before = (_cpu_of(pids), _cpu_of(db), _cpu_of(lb))
            result = send(corpus, profile, port, aet, Shape("x", "small", associations), work)
            after = (_cpu_of(pids), _cpu_of(db), _cpu_of(lb))
            run.seconds, run.error = result.seconds, result.error
            run.pacs_cpu_s, run.db_cpu_s, run.lb_cpu_s = (
                a - b for a, b in zip(after, before, strict=True))
    except Exception as exc:  # a run that fails is reported, the others go on
        run.error = f"{type(exc).__name__}: {exc}"
    status = run.error or (f"{run.rate:.0f} inst/s, pacs {run.per_instance_ms(run.pacs_cpu_s):.2f}"
                           f" ms/inst, PostgreSQL {run.per_instance_ms(run.db_cpu_s):.2f} ms/inst")
    log(f"  {target:4s} {associations} assoc: {status}")
    return run


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)

    def of(self, target: str, associations: int) -> list[Run]:
        return [r for r in self.runs if r.target == target and r.associations == associations
                and r.error is None]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def render(res: Results, args: argparse.Namespace) -> str:
    lines = [f"# Replicas benchmark {_dt.datetime.now():%Y-%m-%d %H:%M:%S}", "",
             f"- machine: {platform.machine()}, {CORES} CPUs, {platform.system()} "
             f"{platform.release()}",
             f"- {args.small} small instances (bench.ingest's corpus), storescu "
             "(TCP_NODELAY=1), one association per storescu process; "
             f"{args.repeat} repetitions, targets alternated; PostgreSQL "
             f"{args.postgres.rsplit('@', 1)[-1]}",
             "- one: one `pacs serve`; two: two `pacs serve` on one database and one data "
             "folder behind HAProxy (TCP round robin)", "",
             "| associations | one (inst/s) | two (inst/s) | two / one "
             "| pacs CPU ms/inst (one, two) | PostgreSQL CPU ms/inst (one, two) "
             "| HAProxy CPU ms/inst |",
             "|---|---|---|---|---|---|---|"]
    projection: list[str] = []
    for associations in args.associations:
        one, two = res.of("one", associations), res.of("two", associations)
        r1, r2 = _median([r.rate for r in one]), _median([r.rate for r in two])
        ratios = [b.rate / a.rate for a, b in zip(one, two, strict=False) if a.rate]

        def ms(runs: list[Run], attr: str) -> float | None:
            return _median([r.per_instance_ms(getattr(r, attr)) for r in runs])

        p1, p2 = ms(one, "pacs_cpu_s"), ms(two, "pacs_cpu_s")
        d1, d2 = ms(one, "db_cpu_s"), ms(two, "db_cpu_s")
        lb = ms(two, "lb_cpu_s")
        spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""
        lines.append(
            f"| {associations} | {_f(r1)} | {_f(r2)} | "
            f"{_f(_median(ratios), 2)}{spread} | {_f(p1, 2)}, {_f(p2, 2)} | "
            f"{_f(d1, 2)}, {_f(d2, 2)} | {_f(lb, 2)} |")
        if p2 and d2:
            per_node = CORES * 1000 / p2  # a node of this machine's size, its cores all pacs
            db_bound = CORES * 1000 / d2  # PostgreSQL on a machine of this size
            projection.append(
                f"- {associations} associations: a pacs node of {CORES} cores takes about "
                f"{per_node:.0f} inst/s of pacs CPU ({p2:.2f} ms each); PostgreSQL on {CORES} "
                f"cores about {db_bound:.0f} inst/s ({d2:.2f} ms each). Four nodes: about "
                f"{min(4 * per_node, db_bound):.0f} inst/s "
                f"({'bound by PostgreSQL' if db_bound < 4 * per_node else 'bound by the nodes'})"
                f", against {_f(r1)} for one server on this machine.")
    lines += ["", "## What bounds it", "",
              f"On this machine the clients, the replicas, PostgreSQL and HAProxy share {CORES} "
              "cores: a second replica adds no cores, only a second process for the GIL (a "
              "single pacs already runs several DIMSE worker processes), so two / one near 1 "
              "here says the cores are the bound, not pacs.", "",
              "## Projection (from the CPU per instance above; the clients' CPU left out)", "",
              *projection, ""]
    failures = [r for r in res.runs if r.error]
    if failures:
        lines += ["## Failed runs", ""] + [
            f"- {r.target}, {r.associations} associations: {r.error}" for r in failures] + [""]
    return "\n".join(lines)


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.replicas",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--small", type=int, default=2000, help="small instances (2000)")
    ap.add_argument("--associations", default="4,8", help="comma list of association counts")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (3)")
    ap.add_argument("--postgres", default=os.environ.get("PACS_BENCH_POSTGRES", DEFAULT_POSTGRES))
    ap.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = ap.parse_args(argv)
    args.associations = [int(a) for a in args.associations.split(",") if a.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = postgres_problem(args.postgres)
    if problem:
        log(f"PostgreSQL is needed: {problem}")
        return 1
    from tests.support.haproxy import available

    if not available():
        log("HAProxy is needed (make haproxy)")
        return 1
    corpus = ensure_corpus("small", args.small).head(args.small)
    warm_page_cache(corpus)
    res = Results()
    with tempfile.TemporaryDirectory(prefix="pacs-replicas-") as tmp:
        root = Path(tmp)
        profile = write_storescu_profile(corpus.contexts, root / "profile.cfg")
        counter = 0
        for rep in range(args.repeat):
            log(f"repetition {rep + 1} of {args.repeat}")
            for associations in args.associations:
                order = TARGETS if rep % 2 == 0 else TARGETS[::-1]
                for target in order:
                    counter += 1
                    res.runs.append(run_once(target, associations, corpus, profile,
                                             args.postgres, root, counter))
    text = render(res, args)
    args.output.write_text(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"replicas-{_dt.datetime.now():%Y%m%d-%H%M%S}.md").write_text(text)
    print(text)
    log(f"written to {args.output}")
    return 1 if any(r.error for r in res.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
