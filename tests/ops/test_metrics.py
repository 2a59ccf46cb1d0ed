"""``GET /metrics`` of a real ``pacs serve`` with two DIMSE processes: C-STOREs by DCMTK
storescu over several associations (some served by the worker process), STOW-RS, QIDO-RS,
WADO-RS and C-FIND, a QA decision, a routing job and a lost blob; the scrape, parsed with
prometheus-client's parser, counts exactly what was sent, with no UID in any label; and it
is protected like every route, with a scrape token accepted there only."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset

from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.server import PacsServer, bearer, free_port, token
from tests.support.wait import until

SCRAPE_TOKEN = "scrape-0123456789abcdef"
STUDY_A = f.make_uid("metrics", "dimse")
STUDY_B = f.make_uid("metrics", "stow")
BOUNDARY = "metrics-boundary"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Site:
    server: PacsServer
    tokens: dict[str, str]
    workdir: Path
    sent: list[Dataset] = field(default_factory=list)

    def call(self, method: str, path: str, who: str | None = None,
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(bearer(self.tokens[who]))
        return httpx.request(method, f"{self.server.base_url}{path}", headers=headers,
                             timeout=60, **kwargs)

    def scrape(self) -> str:
        answer = self.call("GET", "/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        return answer.text


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def _stow_body(parts: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    for content_type, data in parts:
        out.write(f"\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        out.write(data)
    out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("metrics")
    nobody = free_port()  # the routing destination: nothing listens there, jobs fail
    server = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}",
        extra_args=["--auth", "required", "--qa", "manual", "--dimse-processes", "2",
                    "--stable-seconds", "0", "--peer", f"DEST=127.0.0.1:{nobody}",
                    "--route", "*=DEST"],
        start_env={"PACS_METRICS_TOKEN": SCRAPE_TOKEN})
    tokens = {role: token(server, role, role) for role in ("viewer", "uploader", "qa", "admin")}
    server.start()
    try:
        yield Site(server, tokens, root)
    finally:
        server.stop()


def _store(site: Site, datasets: list[Dataset], name: str) -> str:
    folder = site.workdir / name
    folder.mkdir()
    files = [f.write_part10(ds, folder / f"{n}.dcm") for n, ds in enumerate(datasets)]
    result = dcmtk.storescu(site.server.dimse_port, files, workdir=folder)
    return dcmtk.status_lines(result)


def test_the_scrape_counts_what_was_sent(site: Site) -> None:
    series_a = [f.ct_instance(StudyInstanceUID=STUDY_A, InstanceNumber=n, PatientName="Doe^Jane",
                              Rows=16, Columns=16) for n in range(1, 5)]
    bad = f.invalid_uid_instance("1.2.abc", keyword="StudyInstanceUID", PatientName="Doe^Bad")
    # three associations: with two processes, the listening one serves some, the worker others
    assert _store(site, series_a[:2], "first").count("(Success)") == 2
    assert _store(site, series_a[2:], "second").count("(Success)") == 2
    third = _store(site, [series_a[0], bad], "third")  # a re-send, and one refused (0xC000)
    assert third.count("(Success)") == 1

    series_b = [f.mr_instance(StudyInstanceUID=STUDY_B, InstanceNumber=n, PatientName="Roe^Rick",
                              Rows=16, Columns=16) for n in range(1, 4)]
    body = _stow_body([("application/dicom", f.to_part10_bytes(ds)) for ds in series_b]
                      + [("application/octet-stream", b"not an instance")])
    stow = site.call("POST", "/dicom-web/studies", "uploader", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json"})
    assert stow.status_code == 202, stow.text  # three stored, one part refused (0xC000)

    accepted = site.call("POST", f"/api/studies/{STUDY_A}/accept", "qa")
    assert accepted.status_code == 200, accepted.text  # B stays in the QA queue
    first, lost = series_a[0], series_a[1]
    series = str(first.SeriesInstanceUID)
    assert site.call("GET", "/dicom-web/studies", "viewer").status_code == 200
    assert site.call("GET", f"/dicom-web/studies/{STUDY_A}/series", "viewer").status_code == 200
    instance = f"/dicom-web/studies/{STUDY_A}/series/{series}/instances/{first.SOPInstanceUID}"
    assert site.call("GET", instance, "viewer").status_code == 200
    with site.server.services() as services:  # a blob lost under the index
        with services.index.unit_of_work() as repo:
            stored = repo.find_instance(str(lost.SOPInstanceUID))
        assert stored is not None
        services.blobs.local_path(stored.blob_key).unlink()
    gone = f"/dicom-web/studies/{STUDY_A}/series/{series}/instances/{lost.SOPInstanceUID}"
    assert site.call("GET", gone, "viewer").status_code == 404
    found, matches = dcmtk.findscu(site.server.dimse_port, [
        "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY_A}"], workdir=site.workdir)
    assert found.returncode == 0 and len(matches) == 1

    log = site.server.log()
    pids = set(re.findall(r"\[pid (\d+)\] pacs\.dimse\.handlers: association from", log))
    assert len(pids) == 2, log  # the worker process served associations too

    def settled() -> Samples | None:
        now = samples(site.scrape())
        done = (value(now, "pacs_dimse_associations_open") == 0
                and value(now, "pacs_routing_jobs", state="failed") == 1)
        return now if done else None

    now: Samples = until("associations closed and the routing job failed", settled)

    def stores(protocol: str, outcome: str, status: str = "0000") -> float:
        return value(now, "pacs_stores_total", protocol=protocol, outcome=outcome, status=status)

    assert stores("dimse", "stored") == 4
    assert stores("dimse", "already_present") == 1
    assert stores("dimse", "failed", "C000") == 1
    assert stores("dicomweb", "stored") == 3
    assert stores("dicomweb", "failed", "C000") == 1
    assert value(now, "pacs_store_duration_seconds_count", protocol="dimse") == 6
    assert value(now, "pacs_store_duration_seconds_count", protocol="dicomweb") == 4
    assert value(now, "pacs_dimse_associations_total") == 4  # three storescu, one findscu
    assert value(now, "pacs_dimse_request_duration_seconds_count", service="C-FIND") == 1
    assert value(now, "pacs_qa_queue_studies") == 1
    assert sum(v for (name, _), v in now.items() if name == "pacs_routing_jobs") == 1
    assert value(now, "pacs_blob_store_errors_total", operation="read") == 1

    def http(route: str, code: str, method: str = "GET") -> float:
        return value(now, "pacs_http_requests_total", method=method, route=route, code=code)

    instance_route = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
    assert http("/dicom-web/studies", "202", "POST") == 1
    assert http("/dicom-web/studies", "200") == 1
    assert http("/dicom-web/studies/{study}/series", "200") == 1
    assert http(instance_route, "200") == 1
    assert http(instance_route, "404") == 1
    assert value(now, "pacs_http_request_duration_seconds_count", method="GET",
                 route=instance_route) == 2

    text = site.scrape()
    uids = {str(ds[keyword].value) for ds in [*series_a, *series_b]
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    assert not [uid for uid in uids if uid in text]
    assert not [name for name in ("Doe", "Roe", "Jane", "Rick") if name in text]
    for (_, labels), _count in samples(text).items():
        for label, label_value in labels:
            assert label == "le" or not re.search(r"\d+\.\d+\.\d+", label_value), label_value


def test_metrics_need_the_admin_role_or_the_scrape_token(site: Site) -> None:
    missing = site.call("GET", "/metrics")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="pacs"'
    assert site.call("GET", "/metrics", "viewer").status_code == 403
    assert site.call("GET", "/metrics", "admin").status_code == 200
    wrong = {"Authorization": f"Bearer {SCRAPE_TOKEN[:-1]}x"}
    assert site.call("GET", "/metrics", headers=wrong).status_code == 401
    scraper = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
    assert site.call("GET", "/metrics", headers=scraper).status_code == 200
    # the scrape token opens /metrics only
    assert site.call("GET", "/dicom-web/studies", headers=scraper).status_code == 401
    assert site.call("GET", "/api/jobs", headers=scraper).status_code == 401


def test_every_family_parses_with_its_type_and_help(site: Site) -> None:
    families = list(text_string_to_metric_families(site.scrape()))
    assert {family.name for family in families} >= {
        "pacs_stores", "pacs_store_duration_seconds", "pacs_dimse_associations_open",
        "pacs_http_requests", "pacs_http_request_duration_seconds", "pacs_qa_queue_studies",
        "pacs_routing_jobs"}
    for family in families:
        assert family.type in ("counter", "gauge", "histogram") and family.documentation
        assert all(sample.value == sample.value for sample in family.samples)  # no NaN


IMPORT_AND_SCRAPE = """
import sys
from pathlib import Path

from pacs.services import metrics
from pacs.serve import open_services
from pacs.settings import Settings

folder, data, files = (Path(argument) for argument in sys.argv[1:])
metrics.enable(folder)
with open_services(Settings(data_dir=data)) as services:
    services.importer.import_paths([files])
    scrape = metrics.Scrape(folder, index=services.index, live_pids=lambda: set())
    sys.stdout.write(scrape.render().decode())
"""


def test_imports_count_as_their_own_protocol(tmp_path: Path) -> None:
    """``pacs import`` exports nothing itself; a process that imports with the metrics on
    (here a small script in a process of its own) counts its stores under ``import``."""
    files = tmp_path / "files"
    files.mkdir()
    for n in (1, 2):
        f.write_part10(f.ct_instance(PatientID="IMPORT", InstanceNumber=n), files / f"{n}.dcm")
    f.write_part10(f.invalid_uid_instance("1.2.abc", keyword="StudyInstanceUID"),
                   files / "bad.dcm")
    folder = tmp_path / "metrics"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", IMPORT_AND_SCRAPE, str(folder),
                           str(tmp_path / "data"), str(files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    found = samples(done.stdout)
    assert value(found, "pacs_stores_total", protocol="import", outcome="stored",
                 status="0000") == 2
    assert value(found, "pacs_stores_total", protocol="import", outcome="failed",
                 status="C000") == 1
    assert value(found, "pacs_qa_queue_studies") == 0  # --qa auto: archived at once


def test_each_run_counts_in_a_fresh_folder_of_its_own(tmp_path: Path) -> None:
    """Made at start, removed at a clean stop; a killed run's is removed by the next start."""
    def folders(pid: int) -> list[Path]:
        return list(Path(tempfile.gettempdir()).glob(f"pacs-metrics-{pid}-*"))

    server = PacsServer(data_dir=tmp_path / "data",
                        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
                        extra_args=["--dimse-processes", "1"]).start()
    assert server.process is not None
    killed = server.process.pid
    assert len(folders(killed)) == 1
    server.kill9()
    assert len(folders(killed)) == 1  # nothing ran to remove it

    server.start()
    assert server.process is not None
    restarted = server.process.pid
    try:
        assert folders(killed) == []
        (folder,) = folders(restarted)
        assert list(folder.glob("*.db"))  # the new run's counts
    finally:
        assert server.stop() == 0
    assert folders(restarted) == []
