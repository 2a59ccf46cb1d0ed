"""``pacs serve --blob-store s3://...`` against moto's S3 server on 127.0.0.1: DCMTK stores,
WADO-RS, C-GET and C-MOVE give the bytes back unchanged, ``pacs check`` and ``pacs import``
work on the bucket, and an object store that stops mid-ingest loses nothing acknowledged and
leaves no index row without its object. On SQLite and, when switched on, PostgreSQL (the
multi-node target)."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from storage.index import Index
from tests.dicomweb.test_wado import parts
from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.files import comparable, sop_instance_uid
from tests.support.moto import MotoS3, moto_s3
from tests.support.server import PacsServer
from tests.support.wait import until

PREFIX = "archive/"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


pytestmark = pytest.mark.usefixtures("lenient_reading")


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    """A moto S3 server recording what it receives (to be restarted with its objects), and
    the AWS variables for every process the test starts."""
    with moto_s3(tmp_path / "moto", recording=True) as server:
        for name, value in server.env(AWS_MAX_ATTEMPTS="1").items():
            monkeypatch.setenv(name, value)
        yield server


def _files(folder: Path) -> list[Path]:
    """Instances of several kinds, one larger than a ranged GET (8 MiB) and multi-frame."""
    study = {"PatientID": "S3-1", "PatientName": "OBJECT^STORE", "StudyDate": "20240601",
             "AccessionNumber": "S3-ACC-1", "StudyDescription": "S3",
             "StudyInstanceUID": f.make_uid("s3", folder.name)}
    datasets = [
        f.ct_instance(InstanceNumber=n, seed=n, **study) for n in range(1, 6)
    ] + [
        f.encode(f.ct_instance(SeriesNumber=2, InstanceNumber=1, **study),
                 pydicom.uid.RLELossless),
        f.multiframe_instance(frames=40, Rows=256, Columns=512, SeriesNumber=3, **study),
    ]
    return [f.write_part10(ds, folder / f"{n:02d}.dcm") for n, ds in enumerate(datasets)]


def _rows(server: PacsServer) -> dict[str, str]:
    """SOP Instance UID → blob key of every indexed instance (the index alone: it is read
    while the object store is down too)."""
    index = Index(server.database_url)
    try:
        with index.unit_of_work() as repo:
            return {row.sop_instance_uid: row.blob_key for row in repo.iter_instances()}
    finally:
        index.dispose()


def _by_uid(files: list[Path]) -> dict[str, bytes]:
    return {sop_instance_uid(path): comparable(path.read_bytes()) for path in files}


def _local_blobs(data_dir: Path) -> list[Path]:
    """Files the server kept under its data folder: blobs or staged uploads."""
    objects = [p for p in (data_dir / "objects").rglob("*") if p.is_file()]
    staged = [p for p in (data_dir / "tmp").rglob("*") if p.is_file() and p.stat().st_size]
    return objects + staged


def test_store_retrieve_check_and_import_on_s3(
    moto: MotoS3, tmp_path: Path, database_url: str
) -> None:
    bucket = moto.bucket()
    blob_store = f"s3://{bucket}/{PREFIX}"
    destination = dcmtk.Storescp(tmp_path / "moved").start()
    server = PacsServer(data_dir=tmp_path / "data", database_url=database_url,
                        extra_args=["--blob-store", blob_store, "--peer", destination.peer])
    files = _files(tmp_path / "sent")
    sent = _by_uid(files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    multiframe = pydicom.dcmread(files[-1])
    try:
        server.start()
        assert httpx.get(f"{server.base_url}/readyz", timeout=30).json()["status"] == "ok"
        stored = dcmtk.storescu(server.dimse_port, files, workdir=tmp_path)
        assert dcmtk.successes(stored) == len(files), dcmtk.status_lines(stored)

        objects = moto.objects(bucket, PREFIX)
        rows = _rows(server)
        assert sorted(rows) == sorted(sent)
        assert sorted(objects) == sorted(f"{PREFIX}{k[:2]}/{k}" for k in rows.values())
        for uid, key in rows.items():
            assert comparable(objects[f"{PREFIX}{key[:2]}/{key}"]) == sent[uid], uid

        # WADO-RS: streamed by ranged GETs, the bytes as sent
        answer = httpx.get(f"{server.base_url}/dicom-web/studies/{study}",
                           headers={"Accept": AS_STORED}, timeout=120)
        assert answer.status_code == 200, answer.text
        got = {str(pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID):
               comparable(body) for _, body in parts(answer)}
        assert got == sent
        client = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        (frame,) = client.retrieve_instance_frames(
            study, str(multiframe.SeriesInstanceUID), str(multiframe.SOPInstanceUID),
            frame_numbers=[33])  # read from the stored file by seeks and ranged GETs
        np.testing.assert_array_equal(
            np.frombuffer(frame, dtype="<u2").reshape(256, 512), multiframe.pixel_array[32])

        # C-GET into getscu, C-MOVE to storescp: each object fetched into a file and sent
        got_folder = tmp_path / "got"
        got_back = dcmtk.getscu(server.dimse_port,
                                ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                                output=got_folder)
        assert got_back.returncode == 0, dcmtk.status_lines(got_back)
        received = _by_uid(sorted(got_folder.iterdir()))
        rle = sop_instance_uid(files[5])  # getscu takes no RLE: decoded for it (from the file)
        assert received.keys() == sent.keys()
        assert {u: b for u, b in received.items() if u != rle} == {
            u: b for u, b in sent.items() if u != rle}
        np.testing.assert_array_equal(
            pydicom.dcmread(next(p for p in got_folder.iterdir() if rle in p.name)).pixel_array,
            pydicom.dcmread(files[5]).pixel_array)
        moved = dcmtk.movescu(server.dimse_port,
                              ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                              destination=destination.ae_title)
        assert "Final Move Response (Success)" in dcmtk.status_lines(moved)
        assert _by_uid(destination.files()) == sent

        # pacs import on the same bucket, beside the running server
        more = [f.write_part10(f.ct_instance(PatientID="S3-2", InstanceNumber=n),
                               tmp_path / "import" / f"{n}.dcm") for n in (1, 2)]
        imported = server.cli("import", str(tmp_path / "import"), "--blob-store", blob_store)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert "stored: 2," in imported.stdout
        assert set(_by_uid(more)) <= set(_rows(server))
        assert len(moto.objects(bucket, PREFIX)) == len(files) + 2
    finally:
        assert server.stop() == 0
        destination.stop()

    # pacs check: consistent, then a lost object and a stray one are found
    checked = server.cli("check", "--blob-store", blob_store)
    assert checked.returncode == 0 and "consistent" in checked.stdout, checked.stdout
    assert f"instances indexed: {len(files) + 2}, files stored: {len(files) + 2}" in checked.stdout
    lost_key = _rows(server)[sop_instance_uid(files[0])]
    s3 = moto.client()
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}{lost_key[:2]}/{lost_key}")
    stray = "f" * 64
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}ff/{stray}", Body=b"no row names me")
    broken = server.cli("check", "--blob-store", blob_store, "--orphan-grace", "0")
    assert broken.returncode == 1, broken.stdout
    assert f"missing file: instance {sop_instance_uid(files[0])} (blob {lost_key})" \
        in broken.stdout
    assert f"orphan file: blob {stray}" in broken.stdout
    assert _local_blobs(server.data_dir) == []  # nothing kept on the local disk


def test_object_store_stopping_mid_ingest_loses_nothing_acknowledged(
    moto: MotoS3, tmp_path: Path, database_url: str
) -> None:
    """The object store goes away while storescu sends: every later store is refused
    (0xA700), every instance that got 0x0000 is in the object store once it is back, and no
    index row lacks its object."""
    bucket = moto.bucket()
    blob_store = f"s3://{bucket}/{PREFIX}"
    files = [f.write_part10(f.ct_instance(PatientID="S3-STOP", InstanceNumber=n, seed=n),
                            tmp_path / "sent" / f"{n:03d}.dcm") for n in range(1, 81)]
    server = PacsServer(data_dir=tmp_path / "data", database_url=database_url,
                        extra_args=["--blob-store", blob_store])
    server.start()
    try:
        config = dcmtk.storescu_config(files, tmp_path / "stop.cfg")
        sender = subprocess.Popen(
            [dcmtk.tool("storescu"), "-v", "-nh", "-aec", "PACS", "-xf", str(config), "Default",
             "127.0.0.1", str(server.dimse_port), *map(str, files)],
            env=dcmtk.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        until("20 instances indexed", lambda: len(_rows(server)) >= 20)
        moto.stop()  # mid-ingest
        output, _ = sender.communicate(timeout=600)
        rows = _rows(server)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        down = httpx.get(f"{server.base_url}/dicom-web/studies/{study}",
                         headers={"Accept": AS_STORED}, timeout=120)
        readiness = httpx.get(f"{server.base_url}/readyz", timeout=30)
    finally:
        server.stop()

    assert down.status_code == 503, down.text  # reads: try again later
    assert "the blob store is unavailable" in down.text and "127.0.0.1" not in down.text
    assert readiness.status_code == 503  # a balancer sends this server no new work
    assert readiness.json()["checks"]["blob_store"] == "failed"

    acknowledged = _acknowledged(output, files)
    assert 20 <= len(acknowledged) < len(files), output[-3000:]
    assert acknowledged == files[: len(acknowledged)]  # none after the store went away
    # every later store refused with 0xA700 (storescu -nh goes on after a refusal)
    refused = output.count("Received Store Response (Refused: OutOfResources)")
    assert refused == len(files) - len(acknowledged), output[-3000:]

    moto.start()  # the same endpoint, with what it had
    moto.replay()
    objects = moto.objects(bucket, PREFIX)
    sent = _by_uid(files)
    assert set(_by_uid(acknowledged)) <= set(rows)  # nothing acknowledged is lost
    for uid, key in rows.items():  # and no row lacks its object
        assert comparable(objects[f"{PREFIX}{key[:2]}/{key}"]) == sent[uid], uid
    checked = server.cli("check", "--blob-store", blob_store, "--quick")
    assert "missing file" not in checked.stdout, checked.stdout


def _acknowledged(output: str, files: list[Path]) -> list[Path]:
    """The files whose C-STORE got Success: storescu sends one at a time, in order, and names
    each file before its request."""
    done, current = [], None
    by_name = {str(path): path for path in files}
    for line in output.splitlines():
        if "Sending file: " in line:
            current = by_name.get(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def test_a_missing_bucket_stops_serve_with_one_line(
    moto: MotoS3, tmp_path: Path, sqlite_url: str
) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--blob-store", "s3://no-such-bucket/x"])
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert "pacs: error: --blob-store s3://no-such-bucket/x/: cannot reach the bucket" \
        in str(failed.value)
    assert "Traceback" not in str(failed.value)
    assert f"127.0.0.1:{moto.port}" not in str(failed.value).split("pacs: error:")[1]


def test_the_stability_checks_read_their_pixels_from_the_bucket(
    moto: MotoS3, tmp_path: Path, sqlite_url: str
) -> None:
    """The QA pixel check at stability decodes the first frame of each series from the
    object store (a seekable reader of ranged GETs): a sound study is archived, not
    quarantined for a reader pydicom cannot use."""
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        blob_store=f"s3://{moto.bucket()}/{PREFIX}",
                        extra_args=["--stable-seconds", "0.5"]).start()
    try:
        study = f.make_uid("s3", "stable")
        dcmtk.store_datasets(server.dimse_port, [
            f.ct_instance(PatientID="S3-STABLE", StudyInstanceUID=study, InstanceNumber=n)
            for n in (1, 2)], workdir=tmp_path)
        settled = until("the study is stable", lambda: (
            (detail := httpx.get(f"{server.base_url}/api/studies/{study}", timeout=30).json())
            and detail.get("stable") and detail))
        assert settled["state"] == "archived", settled.get("findings")
        assert settled["findings"] == []
    finally:
        server.stop()
