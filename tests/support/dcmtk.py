"""Run DCMTK tools as real peers. Every tool gets ``TCP_NODELAY=1`` (Debian's build leaves
Nagle on otherwise, and each transfer crawls at 11 instances/s)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest


def env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"DCMTK tool {name!r} is not installed (make test installs package dcmtk)")
    return path


def run(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(name), *args], env=env(), capture_output=True, text=True, timeout=timeout
    )


def echoscu(port: int, aec: str = "PACS", *, extra: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[str]:
    return run("echoscu", "-aec", aec, *extra, "127.0.0.1", str(port))


def tls(key: Path, cert: Path, ca: Path) -> tuple[str, ...]:
    """DCMTK's DICOM TLS options: this client key and certificate, trusting ``ca`` for the
    server's certificate, with the Non-downgrading BCP 195 profile (TLS 1.2+, PS3.15 B.9)."""
    return ("+tls", str(key), str(cert), "+cf", str(ca), "--profile-bcp195-nd")


def storescu_config(files: Iterable[Path], path: Path) -> Path:
    """A storescu profile with one presentation context per (SOP class, transfer syntax) of the
    files, so a mixed corpus (RLE, JPEG 2000, deflated, ...) goes as stored, not transcoded."""
    pairs: set[tuple[str, str]] = set()
    for file in files:
        meta = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=[]).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    syntaxes = sorted({ts for _, ts in pairs})
    names = {ts: f"TS{n}" for n, ts in enumerate(syntaxes, 1)}
    lines = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        lines += [f"[{names[ts]}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for n, (sop, ts) in enumerate(sorted(pairs), 1):
        lines.append(f"PresentationContext{n} = {sop}\\{names[ts]}")
    if len(pairs) > 128:
        raise ValueError(f"{len(pairs)} presentation contexts: more than 128")
    lines += ["[[Profiles]]", "[Default]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return path


def storescu(
    port: int, files: list[Path], *, workdir: Path, aec: str = "PACS", aet: str = "STORESCU",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files over one association, proposing exactly the syntaxes they are stored in."""
    config = storescu_config(files, workdir / f"storescu-{id(files)}.cfg")
    args = ["-v", "-aet", aet, "-aec", aec, "-xf", str(config), "Default", *extra]
    return run("storescu", *args, "127.0.0.1", str(port), *map(str, files))


def store_datasets(
    port: int, datasets: Iterable[pydicom.Dataset], *, workdir: Path, aet: str = "STORESCU"
) -> list[Path]:
    """Write each data set to ``workdir/sent/<SOP Instance UID>.dcm`` and C-STORE them over
    one association; every store must succeed. Returns the files sent."""
    from tests.factories.datasets import write_part10

    folder = workdir / "sent"
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm") for ds in datasets]
    result = storescu(port, files, workdir=workdir, aet=aet)
    assert successes(result) == len(files), status_lines(result)
    return files


def successes(result: subprocess.CompletedProcess[str]) -> int:
    """How many C-STORE responses with status Success storescu reported (-v)."""
    text = result.stdout + result.stderr
    return text.count("Received Store Response (Success)")


def findscu(
    port: int, keys: list[str], *, workdir: Path, model: str = "-S", extra: tuple[str, ...] = (),
    aec: str = "PACS",
) -> tuple[subprocess.CompletedProcess[str], list[pydicom.Dataset]]:
    """C-FIND with ``-k`` keys; the response identifiers, read from the files findscu
    extracts (``-X``), in the order they arrived."""
    out = Path(tempfile.mkdtemp(prefix="findscu-", dir=workdir))
    args = ["-v", model, "-aec", aec, "-X", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    result = run("findscu", *args, "127.0.0.1", str(port))
    responses = [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return result, responses


def movescu(
    port: int, keys: list[str], *, destination: str, model: str = "-S",
    extra: tuple[str, ...] = (), aec: str = "PACS",
) -> subprocess.CompletedProcess[str]:
    args = ["-v", model, "-aec", aec, "-aem", destination, *extra]
    for key in keys:
        args += ["-k", key]
    return run("movescu", *args, "127.0.0.1", str(port))


def getscu(
    port: int, keys: list[str], *, output: Path, model: str = "-S",
    extra: tuple[str, ...] = (), aec: str = "PACS",
) -> subprocess.CompletedProcess[str]:
    output.mkdir(parents=True, exist_ok=True)
    args = ["-v", model, "-aec", aec, "-od", str(output), *extra]
    for key in keys:
        args += ["-k", key]
    return run("getscu", *args, "127.0.0.1", str(port))


class Storescp:
    """DCMTK ``storescp`` as a C-MOVE destination, writing what it receives unchanged (+B)."""

    def __init__(self, output: Path, *, ae_title: str = "DEST", accept_all: bool = True,
                 port: int = 0, promiscuous: bool = False, sleep_during: int = 0) -> None:
        self.output = output
        self.sleep_during = sleep_during  # seconds each store takes (a slow workstation)
        self.ae_title = ae_title
        self.accept_all = accept_all
        self.promiscuous = promiscuous  # accept SOP classes DCMTK does not know (-pm)
        self.port = port  # 0: a free one at each start
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Storescp:
        self.output.mkdir(parents=True, exist_ok=True)
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = int(probe.getsockname()[1])
        args = [tool("storescp"), "-aet", self.ae_title, "+B", "-od", str(self.output)]
        if self.accept_all:
            args.append("+xa")
        if self.promiscuous:
            args.append("-pm")
        if self.sleep_during:
            args += ["--sleep-during", str(self.sleep_during)]
        self.process = subprocess.Popen(
            [*args, str(self.port)], env=env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("storescp did not start listening")

    @property
    def peer(self) -> str:
        return f"{self.ae_title}=127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file())

    def clear(self) -> None:
        for path in self.files():
            path.unlink()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def status_lines(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr
