"""Retrieve benchmark: C-MOVE and C-GET of pacs against Orthanc, with DCMTK on the other end.

    python -m bench.retrieve                         # all targets, 3 repetitions (a few minutes)
    python -m bench.retrieve --repeat 1 --small 300  # quick run
    python -m bench.retrieve --targets pacs-sqlite,orthanc

Why it is built this way (bench/README.md has the long version):

* Every target runs side by side for the whole bench, holding the same two studies, stored
  once with DCMTK ``storescu`` (TCP_NODELAY=1): the 300-instance CT 512 study of bench.query
  and one study of 1,000 small CT instances (~39 kB each). Then, per repetition, the targets
  take turns (round robin, the order rotated each repetition): C-MOVE of each study with
  ``movescu`` to a DCMTK ``storescp`` (a fresh output folder each time) and C-GET with
  ``getscu``. A ratio between targets therefore comes from runs that saw the same neighbours.
* The rate is instances / wall time of the DCMTK tool (process start and association
  included), so only the server differs between targets.
* ``storescp`` and ``getscu`` write with ``+B`` (bit-preserving: the data set exactly as it
  arrived), and every retrieved file is compared with the file storescu sent: the bytes after
  the File Meta group (PS3.10 7.1), since the receiver writes its own meta. A changed, missing
  or extra file fails the run.
* ``pacs-stock`` is pacs on SQLite with ``PACS_DIMSE_TRANSPORT=stock`` (pynetdicom as
  published); the other pacs targets get ``PACS_DIMSE_TRANSPORT=fast``. A pacs that does not
  know the setting ignores it, and the report says so.

No timing is asserted. Exit code 1 when a run failed (a tool failed, a file was changed or
missing, a server did not start), 2 when nothing could run, else 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.ingest import (
    CACHE_DIR,
    DEFAULT_POSTGRES,
    REPO,
    RESULTS_DIR,
    Corpus,
    Shape,
    _first_line,
    fresh_database,
    log,
    pacs_command,
    pacs_problem,
    port_listening,
    postgres_problem,
    send,
    server_env,
    write_storescu_profile,
)
from bench.orthanc import (
    LOOPBACK,
    Orthanc,
    find_orthanc,
    free_port,
    http_ok,
    orthanc_config,
    processes_named,
    start_process,
    stop_process,
    wait_until,
)
from bench.query import ensure_move_corpus, move_study_uid

CALLING_AET = "BENCHSCU"
DEST_AET = "DEST"
PACS_AET = "PACS"
TARGETS = ("pacs-sqlite", "pacs-postgres", "pacs-stock", "orthanc")
TRANSPORT = {"pacs-sqlite": "fast", "pacs-postgres": "fast", "pacs-stock": "stock"}
START_TIMEOUT_S = 180.0
TOOL_TIMEOUT_S = 900.0
RESULTS_FILE = REPO / "bench" / "RESULTS-retrieve.md"

# one study of 1,000 small instances: 10 series of 100; seed 42 draws a CT study (CT_small
# pixels with noise, 128x128 16-bit, ~39 kB a file)
SMALL_LAYOUT = (1, 1, 10, 100)  # patients, studies, series, instances
SMALL_SEED = 42
SMALL_CACHE = "retrieve-small1000-v1"

# the target: pacs at least Orthanc's rate, on SQLite and on PostgreSQL
GOAL_VS_ORTHANC = 1.0
GOAL_TARGETS = ("pacs-sqlite", "pacs-postgres")


# ---------------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class Study:
    """A study as stored: its files, and the digest of each file's data set."""

    key: str  # "ct" | "small"
    title: str
    corpus: Corpus
    uid: str
    digests: frozenset[str]  # SHA-256 of the bytes after the File Meta group, one per file

    @property
    def instances(self) -> int:
        return len(self.corpus.files)


def ensure_small_corpus(cache: Path = CACHE_DIR) -> Corpus:
    """One study of 1,000 small CT instances (10 series of 100), generated once."""
    import pydicom

    root = cache / SMALL_CACHE
    if not (root / ".complete").exists():
        from tests.factories.corpus import generate

        if root.exists():
            shutil.rmtree(root)  # an interrupted earlier generation
        patients, studies, series, instances = SMALL_LAYOUT
        log(f"corpus: generating the {patients * studies * series * instances}-instance small "
            f"study in {root}")
        generate(str(root), patients, studies, series, instances, size="small",
                 seed=SMALL_SEED, id_prefix="QRSMALL", quiet=True)
        (root / ".complete").write_text("ok\n")
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        files = tuple(row["path"] for row in csv.DictReader(fh))
    ds = pydicom.dcmread(root / files[0], stop_before_pixels=True)
    contexts = frozenset({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))})
    nbytes = sum((root / f).stat().st_size for f in files)
    return Corpus("small", root, files, nbytes, contexts)


def load_study(key: str, title: str, corpus: Corpus) -> Study:
    """Read every file once: its digest, and a warm page cache for the stores."""
    digests = {_dataset_digest((corpus.root / f).read_bytes()) for f in corpus.files}
    if len(digests) != len(corpus.files):
        raise RuntimeError(f"{title}: two files have the same data set")
    return Study(key, title, corpus, move_study_uid(corpus), frozenset(digests))


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}


def _dataset_digest(data: bytes) -> str:
    """SHA-256 of a Part 10 file's data set: everything after the File Meta group.

    The meta group is walked element by element (explicit VR little endian, PS3.10 7.1)
    rather than trusting its group length, which a writer may leave out.
    """
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos = 132
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        if data[pos + 4:pos + 6] in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return hashlib.sha256(memoryview(data)[pos:]).hexdigest()


# ---------------------------------------------------------------------------------- servers


class Target(Protocol):
    name: str
    aet: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def log_tail(self) -> str: ...


class PacsTarget:
    """``pacs serve`` as a user starts it (default DIMSE processes, QA auto), DEST a peer."""

    def __init__(self, name: str, command: list[str], work: Path, database_url: str,
                 dest_port: int) -> None:
        self.name = name
        self.command = command
        self.work = work
        self.database_url = database_url
        self.dest_port = dest_port
        self.aet = PACS_AET
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port, http_port = free_port(), free_port()
        argv = [
            *self.command, "serve", "--data-dir", str(self.work / "data"), "--ae-title",
            self.aet, "--dimse-port", str(self.port), "--http-port", str(http_port),
            "--http-host", LOOPBACK, "--database-url", self.database_url,
            "--peer", f"{DEST_AET}={LOOPBACK}:{self.dest_port}",
        ]
        env = server_env() | {"PACS_DIMSE_TRANSPORT": TRANSPORT[self.name]}
        self.proc = start_process(argv, self.work / "pacs.log", env=env, cwd=REPO)
        health = f"http://{LOOPBACK}:{http_port}/health"
        wait_until(lambda: http_ok(health), self.proc, START_TIMEOUT_S, self.name)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self) -> str:
        return _tail(self.work / "pacs.log")


class OrthancTarget:
    """bench/orthanc.py's isolated Orthanc with DEST as a modality and SyncStorageArea on
    (its default, spelt out: a stored file is on disk before the store is answered)."""

    name = "orthanc"

    def __init__(self, binary: str, work: Path, dest_port: int) -> None:
        self.orthanc = Orthanc(binary, work, calling_aet=CALLING_AET, env=server_env())
        modalities = orthanc_config(work, 0, 0, "", CALLING_AET)["DicomModalities"]
        modalities["dest"] = [DEST_AET, LOOPBACK, dest_port]
        self.orthanc.extra_config = {"DicomModalities": modalities, "SyncStorageArea": True}
        self.aet = self.orthanc.aet
        self.port = self.orthanc.dicom_port

    def start(self) -> None:
        self.orthanc.start()

    def stop(self) -> None:
        self.orthanc.stop()

    def log_tail(self) -> str:
        return self.orthanc.log_tail(15)


class Destination:
    """DCMTK storescp as the C-MOVE destination: started per C-MOVE on the port the server
    knows, writing into a fresh folder, bit-preserving (``+B``)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, out: Path) -> None:
        argv = ["storescp", "+B", "-aet", DEST_AET, "-od", str(out), str(self.port)]
        self.proc = start_process(argv, self.work / "storescp.log", env=server_env())
        wait_until(lambda: port_listening(self.port), self.proc, 30, "storescp")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------- retrieve


@dataclass(frozen=True)
class Op:
    key: str
    verb: str  # "move" | "get"
    study: str  # Study.key
    title: str


OPS = (
    Op("move-ct", "move", "ct", "C-MOVE CT"),
    Op("move-small", "move", "small", "C-MOVE small"),
    Op("get-ct", "get", "ct", "C-GET CT"),
    Op("get-small", "get", "small", "C-GET small"),
)


@dataclass
class Measurement:
    target: str
    op: Op
    rep: int
    instances: int
    seconds: float = 0.0
    files: int = 0
    identical: int = 0
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0


def _tool_argv(verb: str, target: Target, study: Study, out: Path) -> list[str]:
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}"]
    if verb == "move":
        return ["movescu", "-S", "-aet", CALLING_AET, "-aec", target.aet, "-aem", DEST_AET,
                *keys, LOOPBACK, str(target.port)]
    return ["getscu", "+B", "-S", "-aet", CALLING_AET, "-aec", target.aet, "-od", str(out),
            *keys, LOOPBACK, str(target.port)]


def run_tool(argv: list[str]) -> tuple[float, str | None]:
    """Run movescu or getscu with TCP_NODELAY=1: (wall seconds, error or None)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, timeout=TOOL_TIMEOUT_S,
                          check=False)
    seconds = time.perf_counter() - start
    lines = (done.stdout + done.stderr).decode(errors="replace").splitlines()
    bad = [line for line in lines if line.startswith(("E:", "F:"))]
    if done.returncode != 0 or bad:
        return seconds, f"{argv[0]} exit {done.returncode}: {'; '.join(bad[:3]) or 'no message'}"
    return seconds, None


def check_files(out: Path, study: Study) -> tuple[int, int, str | None]:
    """(files received, files byte-identical to a stored original, what is wrong or None)."""
    files = [p for p in out.iterdir() if p.is_file()] if out.is_dir() else []
    seen: set[str] = set()
    changed = duplicates = 0
    for path in files:
        try:
            digest = _dataset_digest(path.read_bytes())
        except ValueError:
            changed += 1
            continue
        if digest not in study.digests:
            changed += 1
        elif digest in seen:
            duplicates += 1
        else:
            seen.add(digest)
    problems = []
    if changed:
        problems.append(f"{changed} files differ from every stored original")
    if duplicates:
        problems.append(f"{duplicates} files arrived twice")
    if len(seen) < study.instances:
        problems.append(f"{study.instances - len(seen)} of {study.instances} instances missing")
    return len(files), len(seen), "; ".join(problems) or None


def retrieve_once(target: Target, op: Op, study: Study, dest: Destination, out: Path,
                  rep: int) -> Measurement:
    """One C-MOVE or C-GET into a fresh folder, then the file check; never raises."""
    m = Measurement(target.name, op, rep, study.instances)
    try:
        out.mkdir(parents=True)
        if op.verb == "move":
            dest.start(out)
        os.sync()  # the previous run's files are not flushed on this run's time
        m.seconds, m.error = run_tool(_tool_argv(op.verb, target, study, out))
        m.files, m.identical, problem = check_files(out, study)
        m.error = m.error or problem
    except Exception as exc:
        m.error = f"{type(exc).__name__}: {exc}"
    finally:
        dest.stop()
        shutil.rmtree(out, ignore_errors=True)  # up to 160 MB a run: not kept
    head = f"  {m.target:14s} {op.title:13s}"
    if m.error:
        log(f"{head} FAILED: {m.error}")
    else:
        log(f"{head} {m.instances} in {m.seconds:.2f} s = {m.rate:.0f} inst/s, "
            f"{m.identical} files byte-identical")
    return m


def store(target: Target, study: Study, work: Path) -> None:
    """storescu sends the study over one association; raises when a store failed."""
    profile = write_storescu_profile(study.corpus.contexts, work / f"storescu-{study.key}.cfg")
    result = send(study.corpus, profile, target.port, target.aet,
                  Shape(f"store-{study.key}", study.corpus.size, 1), work)
    if result.error:
        raise RuntimeError(f"storing the {study.title}: {result.error}")
    log(f"  {target.name:14s} stored the {study.title}: {study.instances} in "
        f"{result.seconds:.2f} s = {study.instances / result.seconds:.0f} inst/s")


def rotated(targets: Sequence[str], rep: int) -> list[str]:
    """The round-robin order of repetition `rep`: each target goes first in turn."""
    k = rep % len(targets) if targets else 0
    return [*targets[k:], *targets[:k]]


@dataclass
class Bench:
    targets: dict[str, Target] = field(default_factory=dict)
    dests: dict[str, Destination] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def measure(bench: Bench, studies: dict[str, Study], repeat: int, root: Path) -> None:
    names = list(bench.targets)
    for rep in range(repeat):
        order = rotated(names, rep)
        log(f"repetition {rep + 1} of {repeat}: {', '.join(order)}")
        for name in order:
            target = bench.targets[name]
            for op in OPS:
                out = root / name / f"r{rep + 1}-{op.key}"
                m = retrieve_once(target, op, studies[op.study], bench.dests[name], out, rep)
                bench.measurements.append(m)
                if m.error:
                    bench.failures.append(f"{name}, {op.title}, repetition {rep + 1}: {m.error}")


# ------------------------------------------------------------------------------------ report


def rates(ms: Sequence[Measurement], target: str, op: Op) -> dict[int, float]:
    """Repetition -> instances/s, of the runs that succeeded."""
    return {m.rep: m.rate for m in ms if m.target == target and m.op == op and not m.error}


def _median(values: dict[int, float]) -> float | None:
    return statistics.median(values.values()) if values else None


def ratio(ms: Sequence[Measurement], a: str, b: str, op: Op
          ) -> tuple[float | None, list[float]]:
    """(median of the per-repetition ratios, those ratios): a / b within each repetition
    both completed, so that both rates come from the same minutes of the machine."""
    ra, rb = rates(ms, a, op), rates(ms, b, op)
    per_rep = [ra[r] / rb[r] for r in sorted(ra) if r in rb and rb[r] > 0]
    return (statistics.median(per_rep) if per_rep else None), per_rep


def _rate_cell(values: dict[int, float]) -> str:
    if not values:
        return "FAILED"
    low, high = min(values.values()), max(values.values())
    spread = f" ({low:.0f}-{high:.0f})" if len(values) > 1 else ""
    return f"{_median(values):.0f}{spread}"


def _ratio_cell(value: float | None, per_rep: Sequence[float]) -> str:
    if value is None:
        return "n/a"
    spread = f" ({min(per_rep):.2f}-{max(per_rep):.2f})" if len(per_rep) > 1 else ""
    return f"{value:.2f}{spread}"


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """(numerator, denominator, label) of every ratio the report shows."""
    pairs = [(p, "orthanc", f"{p} / orthanc") for p in names
             if p.startswith("pacs-") and "orthanc" in names]
    if "pacs-stock" in names and "pacs-sqlite" in names:
        pairs.append(("pacs-stock", "pacs-sqlite", "pacs-stock / pacs-sqlite (stock / fast)"))
    return pairs


def render(bench: Bench, names: Sequence[str], meta: dict[str, str], repeat: int) -> str:
    ms = bench.measurements
    heads = " | ".join(op.title for op in OPS)
    rule = "|---|" + "---:|" * len(OPS)
    spread = f"min-max of the {repeat} repetitions" if repeat > 1 else "one repetition"
    out = [f"# Retrieve benchmark {meta['when']}", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k != "when"]
    out += ["", f"## Instances/s: median ({spread})", "", f"| target | {heads} |", rule]
    for name in names:
        out.append(f"| {name} | " + " | ".join(_rate_cell(rates(ms, name, op)) for op in OPS)
                   + " |")
    pairs = ratio_pairs(names)
    if pairs:
        out += ["", "## Ratios: median (min-max) of the ratio within each repetition", "",
                f"| ratio | {heads} |", rule]
        for a, b, label in pairs:
            out.append(f"| {label} | "
                       + " | ".join(_ratio_cell(*ratio(ms, a, b, op)) for op in OPS) + " |")
    out += ["", "## Files: received, byte-identical to the stored original (data set after "
            "the File Meta group)", "", "| target | files received | byte-identical |",
            "|---|---:|---:|"]
    for name in names:
        mine = [m for m in ms if m.target == name]
        out.append(f"| {name} | {sum(m.files for m in mine):,} | "
                   f"{sum(m.identical for m in mine):,} of "
                   f"{sum(m.instances for m in mine):,} |")
    out += _goals(bench, names)
    if bench.failures:
        out += ["", "## Failed runs", ""] + [f"- {f}" for f in bench.failures]
    return "\n".join(out) + "\n"


def _goals(bench: Bench, names: Sequence[str]) -> list[str]:
    ms = bench.measurements
    out = ["", "## The issue's targets", "", "| target | goal | measured | verdict |",
           "|---|---|---|---|"]
    for name in (t for t in GOAL_TARGETS if t in names):
        for op in OPS:
            value, per_rep = ratio(ms, name, "orthanc", op)
            verdict = "n/a" if value is None else "met" if value >= GOAL_VS_ORTHANC else "MISSED"
            out.append(f"| {name}: {op.title} pacs/Orthanc | ≥ {GOAL_VS_ORTHANC:.1f}x | "
                       f"{_ratio_cell(value, per_rep)} | {verdict} |")
    expected = sum(m.instances for m in ms)
    identical = sum(m.identical for m in ms)
    changed = any(m.files > m.identical for m in ms)
    out.append(f"| every target: retrieved files byte-identical to the stored originals | "
               f"all | {identical:,} of {expected:,} | "
               f"{'met' if identical == expected and not changed else 'MISSED'} |")
    return out


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.retrieve", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma list from {','.join(TARGETS)} (default all)")
    ap.add_argument("--small", type=int, default=1000,
                    help="instances of the small study stored and retrieved (at most 1000)")
    ap.add_argument("--output", type=Path, default=RESULTS_FILE,
                    help="the report (default bench/RESULTS-retrieve.md)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where servers keep their data (default: system temp)")
    ap.add_argument("--keep", action="store_true",
                    help="keep server data and logs (retrieved files are always removed)")
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if not 1 <= args.small <= 1000:
        ap.error("--small must be between 1 and 1000")
    return args


def usable_targets(wanted: Sequence[str], postgres: str) -> tuple[list[str], str | None,
                                                                  list[str]]:
    """Drop targets that cannot run here, saying why; returns (targets, Orthanc, pacs cmd)."""
    targets = list(wanted)
    orthanc = find_orthanc() if "orthanc" in targets else None
    if "orthanc" in targets and orthanc is None:
        log("orthanc: not installed (apt-get install orthanc): skipped")
        targets.remove("orthanc")
    elif orthanc and processes_named("Orthanc"):
        log("orthanc: note: another Orthanc is running (not ours); left alone")
    command = pacs_command()
    if any(t.startswith("pacs-") for t in targets):
        problem = pacs_problem(command)
        if problem:
            log(f"pacs: cannot run ({problem}): pacs targets skipped")
            targets = [t for t in targets if not t.startswith("pacs-")]
    if "pacs-postgres" in targets:
        problem = postgres_problem(postgres)
        if problem:
            log(f"pacs-postgres: skipped: {problem}")
            targets.remove("pacs-postgres")
    return targets, orthanc, command


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM becomes SystemExit, so every ``finally`` stops its server and drops its
    database."""
    raise SystemExit(128 + signum)


@contextmanager
def _database(name: str, postgres: str, work: Path) -> Iterator[str]:
    if name != "pacs-postgres":
        yield f"sqlite:///{(work / 'data' / 'index.sqlite').resolve()}"
        return
    with fresh_database(postgres, f"pacs_rbench_{os.getpid()}") as url:
        yield url


def start_targets(bench: Bench, names: Sequence[str], studies: dict[str, Study], root: Path,
                  stack: ExitStack, orthanc: str | None, command: list[str],
                  postgres: str) -> None:
    """Start each target and store both studies into it; a target that fails is left out."""
    for name in names:
        work = root / name
        work.mkdir(parents=True)
        dest = Destination(work)
        target: Target | None = None
        try:
            if name == "orthanc" and orthanc is not None:
                target = OrthancTarget(orthanc, work / "server", dest.port)
            else:
                url = stack.enter_context(_database(name, postgres, work))
                target = PacsTarget(name, command, work, url, dest.port)
            stack.callback(target.stop)
            log(f"{name}: starting")
            target.start()
            for study in studies.values():
                store(target, study, work)
        except Exception as exc:
            bench.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            tail = target.log_tail() if target is not None else ""
            if tail:
                log("  last lines of its log:\n"
                    + "\n".join(f"    | {line}" for line in tail.splitlines()))
            continue
        bench.targets[name], bench.dests[name] = target, dest


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for tool in ("storescu", "storescp", "movescu", "getscu"):
        if shutil.which(tool) is None:
            log(f"{tool} not found: install DCMTK (apt-get install dcmtk)")
            return 2
    postgres = os.environ.get("PACS_BENCH_POSTGRES", DEFAULT_POSTGRES)
    names, orthanc, command = usable_targets(args.targets, postgres)
    if not names:
        log("no target can run")
        return 2
    studies = {
        "ct": load_study("ct", "300-instance CT 512 study", ensure_move_corpus()),
        "small": load_study("small", f"{args.small}-instance small study",
                            ensure_small_corpus().head(args.small)),
    }
    bench = Bench()
    root = Path(tempfile.mkdtemp(prefix="pacs-rbench-", dir=args.work_dir))
    try:
        with ExitStack() as stack:
            start_targets(bench, names, studies, root, stack, orthanc, command, postgres)
            measure(bench, studies, args.repeat, root)
    finally:
        if args.keep:
            log(f"kept server data and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    report = render(bench, names, environment(args, orthanc, studies), args.repeat)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamped = RESULTS_DIR / f"retrieve-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    stamped.write_text(report, encoding="utf-8")
    args.output.write_text(report, encoding="utf-8")
    log("")
    log(report)
    log(f"written to {_rel(args.output)} and {_rel(stamped)}")
    return 1 if bench.failures else 0


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def reads_transport_setting() -> bool:
    """Whether this pacs knows PACS_DIMSE_TRANSPORT (a ``dimse_transport`` setting); when it
    does not, pacs-stock runs the same code as pacs-sqlite."""
    try:
        from pacs.settings import Settings
    except ImportError:
        return False
    return "dimse_transport" in Settings.model_fields


def environment(args: argparse.Namespace, orthanc: str | None,
                studies: dict[str, Study]) -> dict[str, str]:
    meta = {"when": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
    meta["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    meta["DCMTK"] = _first_line(["movescu", "--version"])
    if orthanc:
        meta["Orthanc"] = (f"{_first_line([orthanc, '--version'])}, bench/orthanc.py's "
                           "config, SyncStorageArea on")
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "-uno"])
    meta["pacs commit"] = commit + (" (with uncommitted changes)" if dirty != "unknown" else "")
    known = reads_transport_setting()
    meta["pacs"] = (
        "`pacs serve` defaults (DIMSE processes: one per core, at most 4; QA auto), "
        "PACS_DIMSE_TRANSPORT=fast (pacs-sqlite, pacs-postgres) or stock (pacs-stock); "
        + ("this pacs reads the setting" if known else
           "this pacs does NOT read PACS_DIMSE_TRANSPORT yet: pacs-stock runs the same code as "
           "pacs-sqlite")
    )
    for study in studies.values():
        c = study.corpus
        meta[study.title] = (f"{study.instances} files, {c.nbytes / 1e6:.1f} MB "
                             f"({c.nbytes / study.instances / 1e3:.0f} kB/file)")
    meta["method"] = (
        f"{args.repeat} repetitions, targets in turn (order rotated each repetition); "
        "movescu -S to storescp +B (a fresh folder each run), getscu +B -S; TCP_NODELAY=1 for "
        "every DCMTK tool; instances / wall time of movescu or getscu"
    )
    return meta


if __name__ == "__main__":
    sys.exit(main())
