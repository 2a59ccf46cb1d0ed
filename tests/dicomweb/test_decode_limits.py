"""Decoding is bounded (issue 12, item 6), against a real ``pacs serve``: an image whose header
declares more pixels than the decoding limit allows is refused with 422 and a message before
anything is decoded, on every web path that decodes; the server's memory stays small while
three such requests run at once and the stability pixel check looks at the same image; normal
images still render; a deflated data set that inflates
beyond the limit is refused by STOW-RS."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from tests.factories.datasets import ct_instance, to_part10_bytes
from tests.factories.huge import constant_rle_instance, deflate_bomb_instance
from tests.support import dcmtk
from tests.support.server import PacsServer
from tests.support.wait import until

LIMITED_MB = 64  # PACS_MAX_DECODED_MB of the second server


@dataclass
class Stored:
    server: PacsServer
    http: httpx.Client
    huge: Dataset  # declares far more pixels than the limit
    normal: Dataset
    workdir: Path

    def path(self, ds: Dataset) -> str:
        return (f"{self.server.base_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")


def _serving(root: Path, env: dict[str, str], huge: Dataset) -> Iterator[Stored]:
    server = PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root / 'i.sqlite'}",
                        start_env=env)
    server.start()
    try:
        normal = ct_instance(PatientID="DL-NORMAL")
        dcmtk.store_datasets(server.dimse_port, [huge, normal], workdir=root)
        with httpx.Client(timeout=120) as http:
            yield Stored(server, http, huge, normal, root)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def default_limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """The default limits, and the issue's probe: a 4 MB RLE file declaring 16000 x 16000.
    Studies are stable at once, so the stability pixel check decodes meanwhile."""
    root = tmp_path_factory.mktemp("decode-default")
    yield from _serving(root, {"PACS_STABLE_SECONDS": "0"},
                        constant_rle_instance(16000, 16000, PatientID="DL-HUGE"))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """PACS_MAX_DECODED_MB=64 and a 9000 x 9000 RLE image (81 MB decoded, 1.3 MB stored)."""
    root = tmp_path_factory.mktemp("decode-limited")
    env = {"PACS_MAX_DECODED_MB": str(LIMITED_MB), "PACS_MAX_CONCURRENT_DECODES": "1"}
    yield from _serving(root, env, constant_rle_instance(9000, 9000, PatientID="DL-LIMITED"))


def _memory_kb(server: PacsServer, field: str) -> int:
    """``field`` (VmRSS, VmHWM: the peak) of /proc/<pid>/status, summed over the server and its
    child processes."""
    assert server.process is not None
    total = 0
    for pid in [server.process.pid, *server.children()]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1])
    return total


def _refused(response: httpx.Response) -> str:
    assert response.status_code == 422, (response.status_code, response.text[:200])
    message = str(response.json()["error"])
    assert "above the limit of" in message and "MB" in message, message
    return message


def test_three_concurrent_renders_of_a_16000_square_image_are_refused_in_little_memory(
    default_limits: Stored,
) -> None:
    base = default_limits.path(default_limits.huge)
    urls = [base + "/rendered", base + "/thumbnail", base + "/frames/1/rendered"]
    answers: dict[str, httpx.Response] = {}

    def fetch(url: str) -> None:
        answers[url] = default_limits.http.get(url, headers={"Accept": "image/jpeg"})

    threads = [threading.Thread(target=fetch, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for url in urls:
        message = _refused(answers[url])
        assert default_limits.huge.SOPInstanceUID in message
    study = default_limits.huge.StudyInstanceUID
    until("the stability check of the huge image's study", lambda: default_limits.http.get(
        f"{default_limits.server.base_url}/api/studies/{study}").json()["stable"])
    peak_mb = _memory_kb(default_limits.server, "VmHWM") // 1024
    assert peak_mb < 512, f"the server and its workers peaked at {peak_mb} MB"
    thumbnail = default_limits.http.get(
        f"{default_limits.server.base_url}/dicom-web/studies/{study}/thumbnail")
    _refused(thumbnail)
    normal = default_limits.path(default_limits.normal)  # still serving, still rendering
    response = default_limits.http.get(normal + "/rendered", headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    response = default_limits.http.get(normal + "/thumbnail?viewport=32,32")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_decoded_frames_and_transcoded_instances_over_the_limit_are_refused(
    limited: Stored,
) -> None:
    base = limited.path(limited.huge)
    octets = 'multipart/related; type="application/octet-stream"'
    frames = limited.http.get(base + "/frames/1", headers={"Accept": octets})
    _refused(frames)
    instance = limited.http.get(base, headers={"Accept": 'multipart/related; '
                                               'type="application/dicom"'})
    _refused(instance)
    study, series, sop = (limited.huge.StudyInstanceUID, limited.huge.SeriesInstanceUID,
                          limited.huge.SOPInstanceUID)
    native = ct_instance(PatientID="DL-NATIVE", Rows=512, Columns=512)  # 512 KiB a frame
    dcmtk.store_datasets(limited.server.dimse_port, [native], workdir=limited.workdir)
    repeated = limited.http.get(limited.path(native) + "/frames/" + ",".join(["1"] * 200),
                                headers={"Accept": octets})
    _refused(repeated)  # 100 MB of parts assembled in memory, though nothing is decoded
    assert limited.http.get(limited.path(native) + "/frames/1,1",
                            headers={"Accept": octets}).status_code == 200
    uri = limited.http.get(f"{limited.server.base_url}/wado", params={
        "requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
        "contentType": "image/jpeg"})
    _refused(uri)
    as_stored = limited.http.get(base, headers={"Accept": 'multipart/related; '
                                                'type="application/dicom"; transfer-syntax=*'})
    assert as_stored.status_code == 200  # sending it unchanged decodes nothing
    normal = limited.http.get(limited.path(limited.normal) + "/rendered")
    assert normal.status_code == 200


def test_rendered_study_leaves_out_what_is_too_large(limited: Stored) -> None:
    study = limited.huge.StudyInstanceUID
    response = limited.http.get(f"{limited.server.base_url}/dicom-web/studies/{study}/rendered",
                                headers={"Accept": "multipart/related; type=image/jpeg"})
    assert response.status_code == 200
    assert response.content.lower().count(b"content-type: image/jpeg") == 0


def test_stow_of_a_deflated_data_set_that_inflates_beyond_the_limit(limited: Stored) -> None:
    bomb = deflate_bomb_instance((LIMITED_MB + 32) << 20, PatientID="DL-BOMB")
    data = to_part10_bytes(bomb)
    assert len(data) < 1 << 20
    boundary = "decode-limits"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    response = limited.http.post(
        f"{limited.server.base_url}/dicom-web/studies", content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                 f"boundary={boundary}",
                 "Accept": "application/dicom+json"})
    assert response.status_code == 409, response.text
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000]
    assert "inflates beyond the limit of 64 MB" in limited.server.log()  # the part's reason
    after = limited.http.get(limited.path(limited.normal) + "/rendered")
    assert after.status_code == 200  # still serving
    small = pydicom.dcmread(io.BytesIO(to_part10_bytes(ct_instance(PatientID="DL-SMALL"))))
    small.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ok = limited.http.post(
        f"{limited.server.base_url}/dicom-web/studies",
        content=(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                 + to_part10_bytes(small) + f"\r\n--{boundary}--\r\n".encode()),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                 f"boundary={boundary}",
                 "Accept": "application/dicom+json"})
    assert ok.status_code == 200, ok.text  # a deflated data set within the limit is stored
