"""C-STORE from DCMTK storescu into a running ``pacs serve``: every file stored as sent."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pydicom
import pytest

from storage.attributes import Level
from tests.factories import datasets as f
from tests.factories.corpus import generate
from tests.support import dcmtk
from tests.support.files import comparable, sop_instance_uid
from tests.support.server import PacsServer

CODECS = ["rle", "deflate", "j2k-lossless", "j2k", "jls-lossless"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A generated corpus with compressed series, plus factory instances of other kinds."""
    root = tmp_path_factory.mktemp("corpus")
    generate(str(root / "gen"), patients=3, studies=2, series=3, instances=4, seed=11,
             compress_fraction=0.7, codecs=CODECS, quiet=True)
    extra = [
        f.multiframe_instance(frames=5, PatientID="MF-1"),
        f.cr_instance(PatientID="CR-1"),
        f.us_instance(PatientID="US-1"),
        f.sc_instance(PatientID="SC-1"),
        f.sr_instance(PatientID="SR-1"),
        f.pdf_instance(PatientID="PDF-1"),
        f.non_ascii_instance("ISO_IR 192", PatientID="UTF-1"),
        f.non_ascii_instance("ISO_IR 100", PatientID="LAT-1"),
        f.encode(f.ct_instance(PatientID="BE-1"), pydicom.uid.ExplicitVRBigEndian),
        f.encode(f.ct_instance(PatientID="IM-1"), pydicom.uid.ImplicitVRLittleEndian),
        f.encode(f.cr_instance(PatientID="JB-1", BitsStored=8, BitsAllocated=8, HighBit=7),
                 pydicom.uid.JPEGBaseline8Bit),
        f.encode(f.ct_instance(PatientID="JL-1"), pydicom.uid.JPEGLosslessSV1),
    ]
    for n, ds in enumerate(extra):
        f.write_part10(ds, root / "extra" / f"{n:03d}.dcm")
    return sorted(p for p in root.rglob("*.dcm"))


def _stored_bytes(server: PacsServer, sop_uid: str) -> bytes | None:
    with server.services() as services:
        with services.index.unit_of_work() as repo:
            stored = repo.find_instance(sop_uid)
        if stored is None:
            return None
        with services.blobs.open(stored.blob_key) as handle:
            return handle.read()


def _instance_count(server: PacsServer) -> int:
    with server.services() as services, services.index.unit_of_work() as repo:
        return repo.counts()[Level.IMAGE]


def test_corpus_is_stored_byte_identical(
    server: PacsServer, corpus: list[Path], tmp_path: Path
) -> None:
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for p in corpus}
    assert {pydicom.uid.RLELossless, pydicom.uid.DeflatedExplicitVRLittleEndian,
            pydicom.uid.JPEG2000Lossless} <= syntaxes

    result = dcmtk.storescu(server.dimse_port, corpus, workdir=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    assert dcmtk.successes(result) == len(corpus)
    for path in corpus:
        stored = _stored_bytes(server, sop_instance_uid(path))
        assert stored is not None, f"{path} not indexed"
        assert comparable(stored) == comparable(path.read_bytes()), f"{path} differs"
    assert _instance_count(server) == len(corpus)


def test_resending_keeps_one_row_per_instance(
    server: PacsServer, corpus: list[Path], tmp_path: Path
) -> None:
    files = corpus[:20]
    first = dcmtk.storescu(server.dimse_port, files, workdir=tmp_path)
    again = dcmtk.storescu(server.dimse_port, files, workdir=tmp_path)

    assert first.returncode == 0 and again.returncode == 0
    assert dcmtk.successes(again) == len(files)
    assert _instance_count(server) == len(files)
    with server.services() as services:
        assert services.consistency.check().consistent


def test_non_ascii_names_are_indexed_as_text(server: PacsServer, tmp_path: Path) -> None:
    latin = f.write_part10(f.non_ascii_instance("ISO_IR 100", PatientID="LAT-2"),
                           tmp_path / "latin.dcm")
    utf8 = f.write_part10(f.non_ascii_instance("ISO_IR 192", PatientID="UTF-2"),
                          tmp_path / "utf8.dcm")

    result = dcmtk.storescu(server.dimse_port, [latin, utf8], workdir=tmp_path)

    assert result.returncode == 0, result.stderr
    with server.services() as services, services.index.unit_of_work() as repo:
        names = repo.patient_names(["LAT-2", "UTF-2"])
    assert names["LAT-2"] == str(pydicom.dcmread(latin).PatientName)
    assert names["UTF-2"] == str(pydicom.dcmread(utf8).PatientName)
    assert any(ord(c) > 127 for c in names["LAT-2"] + names["UTF-2"])


def test_four_concurrent_associations_lose_nothing(
    server: PacsServer, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = tmp_path_factory.mktemp("concurrent")
    generate(str(root), patients=4, studies=1, series=5, instances=50, seed=21, quiet=True)
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == 1000
    shares = [files[n::4] for n in range(4)]
    results: list[int] = [0] * 4
    codes: list[int] = [-1] * 4

    def send(n: int) -> None:
        done = dcmtk.storescu(server.dimse_port, shares[n], workdir=tmp_path, aet=f"MOD{n}")
        results[n], codes[n] = dcmtk.successes(done), done.returncode

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert codes == [0, 0, 0, 0]
    assert results == [250, 250, 250, 250]
    assert _instance_count(server) == 1000
    with server.services() as services:
        report = services.consistency.check(verify_hashes=False)
    assert report.consistent and report.instances == 1000 and report.blobs == 1000



def test_associations_are_spread_over_the_dimse_processes(
    tmp_path: Path, sqlite_url: str
) -> None:
    """With two DIMSE processes, successive associations are served by both (round robin)."""
    running = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                         extra_args=["--dimse-processes", "2"]).start()
    try:
        # the one worker, and no other process (such as multiprocessing's resource tracker)
        workers = running.children()
        assert len(workers) == 1
        command = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
        assert b"worker_main" in command[2]
        for n in range(4):  # one association each, in turn
            path = f.write_part10(f.ct_instance(PatientID=f"RR-{n}"), tmp_path / f"{n}.dcm")
            assert dcmtk.storescu(running.dimse_port, [path], workdir=tmp_path).returncode == 0
    finally:
        assert running.stop() == 0
    serving = re.findall(r"\[pid (\d+)\].*association from STORESCU", running.log())
    assert len(serving) == 4
    assert len(set(serving)) == 2
    with running.services() as services, services.index.unit_of_work() as repo:
        assert repo.counts()[Level.IMAGE] == 4
