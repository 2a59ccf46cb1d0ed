"""``pacs import`` of data sets without a Part 10 header, and the reasons it gives for the rest.

A bare data set (no preamble, no ``DICM``, no File Meta Information: what some tools write, and
pydicom's test files ``ExplVR_LitEndNoMeta.dcm`` and ``rtstruct.dcm``) is stored as STOW-RS
stores one: a header made for it, its bytes kept. A file that is not DICOM is listed with why.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.factories import datasets as f


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True,
                          text=True, timeout=300)


def bare_bytes(ds: Dataset, *, implicit: bool) -> bytes:
    """``ds`` written as a data set alone: no preamble, no ``DICM``, no group 0002."""
    bare = Dataset(ds)
    bare.file_meta = FileMetaDataset()
    out = io.BytesIO()
    pydicom.dcmwrite(out, bare, implicit_vr=implicit, little_endian=True)
    data = out.getvalue()
    assert data[:4] == b"\x08\x00\x05\x00" or data[:4] == b"\x08\x00\x08\x00"
    return data


def stored_files(data_dir: Path) -> dict[str, bytes]:
    """SOP Instance UID → bytes of each file in the store."""
    files = {}
    for path in (data_dir / "objects").glob("*/*"):
        data = path.read_bytes()
        files[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return files


def test_bare_data_sets_are_stored_with_a_header_made_for_them(
    tmp_path: Path, database_url: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    explicit = f.ct_instance(PatientID="BARE-1", InstanceNumber=1)
    implicit = f.ct_instance(PatientID="BARE-1", InstanceNumber=2)
    originals = {
        str(explicit.SOPInstanceUID): (bare_bytes(explicit, implicit=False),
                                       ExplicitVRLittleEndian),
        str(implicit.SOPInstanceUID): (bare_bytes(implicit, implicit=True),
                                       ImplicitVRLittleEndian),
    }
    for n, (data, _) in enumerate(originals.values()):
        (folder / f"bare{n}.dcm").write_bytes(data)
    data_dir = tmp_path / "data"
    options = ["--data-dir", str(data_dir), "--database-url", database_url]

    result = pacs("import", str(folder), *options)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored: 2, already present: 0, not DICOM: 0, failed: 0" in result.stdout
    stored = stored_files(data_dir)
    assert set(stored) == set(originals)
    for uid, (original, syntax) in originals.items():
        kept = stored[uid]
        assert kept[128:132] == b"DICM" and kept.endswith(original)  # the bytes as they were
        meta = pydicom.dcmread(io.BytesIO(kept), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == syntax
        assert meta.MediaStorageSOPInstanceUID == uid
    check = pacs("check", *options)
    assert check.returncode == 0 and "instances indexed: 2, files stored: 2" in check.stdout
    again = pacs("import", str(folder), *options)
    assert "stored: 0, already present: 2, not DICOM: 0, failed: 0" in again.stdout


def test_files_that_are_not_dicom_are_listed_with_the_reason(
    tmp_path: Path, sqlite_url: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(f.not_dicom_bytes())
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (folder / "tiny").write_bytes(b"\x08\x00")
    bare = bare_bytes(f.ct_instance(PatientID="BARE-2"), implicit=False)
    (folder / "cut.dcm").write_bytes(bare[:40])  # starts as a data set, then ends
    no_uids = f.ct_instance(PatientID="BARE-3", SOPClassUID=None)
    (folder / "no-uids.dcm").write_bytes(bare_bytes(no_uids, implicit=True))

    result = pacs("import", str(folder), "--data-dir", str(tmp_path / "data"),
                  "--database-url", sqlite_url)

    assert result.returncode == 1
    assert "stored: 0, already present: 0, not DICOM: 3, failed: 2" in result.stdout
    lines = result.stdout.splitlines()
    for name in ("notes.txt", "picture.png"):
        assert any(line.startswith("not DICOM: ") and line.endswith(
            f"{name}: no Part 10 header (no DICM after a 128-byte preamble) and no data set "
            "either") for line in lines), result.stdout
    assert any("tiny: too short for a data set" in line for line in lines), result.stdout
    assert any(line.startswith("failed: ") and "cut.dcm" in line
               and "without a Part 10 header" in line for line in lines), result.stdout
    assert any(line.startswith("failed: ") and "no-uids.dcm" in line
               and "SOP Class" in line for line in lines), result.stdout
