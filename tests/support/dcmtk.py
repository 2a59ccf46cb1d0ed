"""Run DCMTK tools as real peers. Every tool gets ``TCP_NODELAY=1`` (Debian's build leaves
Nagle on otherwise, and each transfer crawls at 11 instances/s)."""

from __future__ import annotations

import os
import shutil
import subprocess
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


def echoscu(port: int, aec: str = "PACS") -> subprocess.CompletedProcess[str]:
    return run("echoscu", "-aec", aec, "127.0.0.1", str(port))


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
    port: int, files: list[Path], *, workdir: Path, aec: str = "PACS", aet: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    """Send files over one association, proposing exactly the syntaxes they are stored in."""
    config = storescu_config(files, workdir / f"storescu-{id(files)}.cfg")
    args = ["-v", "-aet", aet, "-aec", aec, "-xf", str(config), "Default"]
    return run("storescu", *args, "127.0.0.1", str(port), *map(str, files))


def successes(result: subprocess.CompletedProcess[str]) -> int:
    """How many C-STORE responses with status Success storescu reported (-v)."""
    text = result.stdout + result.stderr
    return text.count("Received Store Response (Success)")
