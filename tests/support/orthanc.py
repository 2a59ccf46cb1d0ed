"""A throw-away Orthanc with Debian's DICOMweb plugin: a DICOMweb client nobody here wrote.

Started the way ``bench.orthanc`` starts the benchmark's Orthanc (our own JSON config in a
temp dir, never /etc/orthanc or the Debian service; free loopback ports; HTTP refuses remote
clients), plus the plugin and the DICOMweb servers it may push to. Its DICOM listener is off:
the tests feed it over REST, so nothing of it listens beyond HTTP.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.orthanc import Orthanc, find_dicomweb_plugin, find_orthanc


def binaries() -> tuple[str, str]:
    """Orthanc and its DICOMweb plugin (``make orthanc`` installs both). Missing is a failure
    where they could have been installed (root with apt-get), a skip elsewhere."""
    binary, plugin = find_orthanc(), find_dicomweb_plugin()
    if binary is not None and plugin is not None:
        return binary, plugin
    missing = "orthanc" if binary is None else "orthanc-dicomweb"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"package {missing} is missing and installing it needs root and apt-get: "
                    "apt-get install orthanc orthanc-dicomweb (or run make test as root)")
    pytest.fail(f"package {missing} is missing: run `make orthanc` "
                "(apt-get install orthanc orthanc-dicomweb)")


@contextmanager
def running(work: Path, dicomweb_servers: dict[str, str]) -> Iterator[Orthanc]:
    """Orthanc with the DICOMweb plugin, knowing ``dicomweb_servers`` (name → base URL ending
    in ``/``) as STOW-RS / QIDO-RS targets (``DicomWeb.Servers``); stopped by its PID."""
    binary, plugin = binaries()
    orthanc = Orthanc(binary, work, extra_config={
        "Name": "pacs-test",
        "Plugins": [plugin],
        "DicomServerEnabled": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Servers": {name: [url] for name, url in dicomweb_servers.items()}},
    })
    try:
        orthanc.start()
    except RuntimeError as error:
        orthanc.stop()
        raise RuntimeError(f"{error}\n{orthanc.log_tail()}") from error
    try:
        yield orthanc
    finally:
        orthanc.stop()


def upload(orthanc: Orthanc, http: httpx.Client, part10: bytes) -> dict[str, Any]:
    """``POST /instances`` (Orthanc's REST API): its answer, with the ``ParentStudy`` id."""
    answer = http.post(f"{orthanc.url}/instances", content=part10,
                       headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 200, answer.text
    stored: dict[str, Any] = answer.json()
    return stored
