"""Deterministic generator of a realistic DICOM test corpus (pydicom only, offline).

Produces P patients x S studies/patient x R series/study x I instances/series
valid DICOM Part 10 files (128-byte preamble, "DICM", File Meta Information,
Explicit VR Little Endian unless a compressed transfer syntax is picked for a series).

    python -m tests.factories.corpus --out /tmp/corpus --patients 10 --studies-per-patient 5 \
        --series-per-study 4 --instances-per-series 25 --size small --seed 1

Sizes
  small  : headers + pixels taken from pydicom's bundled CT_small.dcm (128x128, 16-bit, ~40 kB,
           with GE private tags) and MR_small.dcm (64x64, 16-bit, ~10 kB); pixels get seeded noise.
  ct512  : 512x512 16-bit CT (BitsStored 12, RescaleIntercept -1024) synthesised with numpy
           (ellipse body/lung/bone phantom varying along z + noise), ~0.5 MB per file.

Compressed instances (optional): --compress-fraction F picks that fraction of *series* and
encodes every instance of the series with one codec from --codecs (round robin over the
codecs that can be encoded here).  Available depending on installed plugins:
  rle        RLE Lossless              1.2.840.10008.1.2.5     (pydicom native, always)
  deflate    Deflated Explicit VR LE   1.2.840.10008.1.2.1.99  (zlib, always)
  j2k-lossless JPEG 2000 Lossless      1.2.840.10008.1.2.4.90  (needs pylibjpeg-openjpeg)
  j2k        JPEG 2000 (lossy, cr=10)  1.2.840.10008.1.2.4.91  (needs pylibjpeg-openjpeg)
  jls-lossless JPEG-LS Lossless        1.2.840.10008.1.2.4.80  (needs pyjpegls)
Codecs that cannot be encoded are skipped with a warning on stderr.

Also writes OUT/manifest.csv (one row per file: path, patient/study/series/SOP UIDs,
modality, transfer syntax, bytes) so that benchmarks and tests know what to query for.
The same arguments (incl. --seed) always give byte-identical files; a corpus of k patients is
the exact prefix of a corpus of n > k patients made with the same other arguments, because
every random draw happens in patient order.
Prints one summary line: "files=N bytes=B ..." on stdout.

This is the in-repo port of the project's original shared corpus script: the project must
not depend on anything outside the repository at run time.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; deterministic via entropy_srcs
IMPL_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1")
IMPL_VERSION = "MAKECORPUS_1"

CODECS: dict[str, UID] = {
    "rle": RLELossless,
    "deflate": DeflatedExplicitVRLittleEndian,
    "j2k-lossless": JPEG2000Lossless,
    "j2k": JPEG2000,
    "jls-lossless": JPEGLSLossless,
}
PIXEL_CODECS = ("rle", "j2k-lossless", "j2k", "jls-lossless")  # encoded by Dataset.compress()
SIZES = ("small", "ct512")

LAST = [
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILSON",
    "JOHNSON",
    "DAVIES",
    "ROBINSON",
    "WRIGHT",
    "THOMPSON",
    "EVANS",
    "WALKER",
    "WHITE",
    "ROBERTS",
    "GREEN",
    "HALL",
    "WOOD",
    "JACKSON",
    "CLARKE",
    "MARTIN",
    "DUPONT",
    "ROSSI",
    "NOVAK",
    "KOWALSKI",
    "SCHMIDT",
    "JANSEN",
    "PETERSEN",
    "LARSEN",
    "NGUYEN",
    "TANAKA",
    "OKAFOR",
    "SILVA",
]
FIRST = [
    "JOHN",
    "MARY",
    "JAMES",
    "ANNA",
    "ROBERT",
    "LINDA",
    "MICHAEL",
    "SARAH",
    "DAVID",
    "EMMA",
    "PETER",
    "LUCY",
    "PAUL",
    "JULIA",
    "MARK",
    "CLAIRE",
    "OMAR",
    "YUKI",
    "ADA",
]
# a share of patients get non-ASCII names (SpecificCharacterSet ISO_IR 192 = UTF-8)
UTF8_NAMES = [
    "MÜLLER^JÜRGEN",
    "GARCÍA^JOSÉ",
    "ØSTERGÅRD^SØREN",
    "DVOŘÁK^ANTONÍN",
    "LEFÈVRE^HÉLÈNE",
    "ÇELİK^AYŞE",
    "ŁUKASZEWSKI^ŁUKASZ",
    "SCHRÖDER^GRETA",
]
INSTITUTIONS = ["GENERAL HOSPITAL", "ST MARY CLINIC", "UNIVERSITY MEDICAL CENTER", "NORTH IMAGING"]
REFERRING = ["HOUSE^GREGORY", "GREY^MEREDITH", "WHO^JOHN", "", "QUINN^MICHAELA"]
CT_STUDIES = [
    ("CT CHEST W/O CONTRAST", "CHEST"),
    ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN"),
    ("CT HEAD W/O CONTRAST", "HEAD"),
    ("CT ANGIO CHEST", "CHEST"),
]
MR_STUDIES = [
    ("MR BRAIN W/WO CONTRAST", "BRAIN"),
    ("MR KNEE LEFT", "KNEE"),
    ("MR LUMBAR SPINE", "LSPINE"),
    ("MR PELVIS", "PELVIS"),
]
CT_SERIES = ["AXIAL 5MM", "AXIAL 1.25MM", "CORONAL MPR", "SAGITTAL MPR", "SCOUT", "BONE WINDOW"]
MR_SERIES = ["T1 AX", "T2 AX", "FLAIR AX", "DWI", "T1 SAG POST", "T2 COR", "LOCALIZER"]
MANIFEST_HEADER = [
    "path",
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "TransferSyntaxUID",
    "bytes",
]

PixelArray = npt.NDArray[Any]
ManifestRow = tuple[str, str, str, str, str, str, str, str, int]


def _load_template(name: str) -> tuple[Dataset, PixelArray]:
    """Load a pydicom bundled test file; never download, so the corpus stays offline."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise SystemExit(f"pydicom test file {name} not available locally")
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    # these would be wrong once seeded noise changes the pixels
    for kw in ("SmallestImagePixelValue", "LargestImagePixelValue", "DataSetTrailingPadding"):
        if kw in ds:
            delattr(ds, kw)
    return ds, arr


def _codec_available(name: str) -> bool:
    """Whether this machine can encode `name` (deflate is zlib, always there)."""
    if name == "deflate":
        return True
    try:
        from pydicom.pixels.encoders.base import get_encoder

        return bool(get_encoder(CODECS[name]).is_available)
    except Exception:
        return False


def _usable_codecs(codecs: Sequence[str]) -> list[str]:
    usable = []
    for c in codecs:
        if c not in CODECS:
            raise SystemExit(f"unknown codec {c!r}; choose from {sorted(CODECS)}")
        if _codec_available(c):
            usable.append(c)
        else:
            print(
                f"make_corpus: codec {c} cannot be encoded here (missing plugin) - skipped",
                file=sys.stderr,
            )
    return usable


class Phantom512:
    """Cheap deterministic CT-like phantom (stored values, BitsStored 12, intercept -1024)."""

    def __init__(self) -> None:
        n = 512
        y, x = np.mgrid[0:n, 0:n].astype(np.float32)
        self.x = (x - n / 2) / (n / 2)
        self.y = (y - n / 2) / (n / 2)

    def slice(self, z: float, rng: np.random.Generator) -> PixelArray:
        x, y = self.x, self.y
        s = 1.0 + 0.08 * np.sin(z / 40.0)
        img = np.full(x.shape, -1000.0, dtype=np.float32)  # air
        body = (x / (0.85 * s)) ** 2 + (y / (0.62 * s)) ** 2 <= 1.0
        img[body] = 40.0  # soft tissue
        lr = 0.22 + 0.05 * np.cos(z / 30.0)
        lung_l = ((x + 0.38) / lr) ** 2 + (y / (lr * 1.6)) ** 2 <= 1.0
        lung_r = ((x - 0.38) / lr) ** 2 + (y / (lr * 1.6)) ** 2 <= 1.0
        img[lung_l | lung_r] = -820.0
        spine = (x / 0.07) ** 2 + ((y - 0.42) / 0.07) ** 2 <= 1.0
        img[spine] = 700.0
        img += np.asarray(rng.normal(0.0, 12.0, size=img.shape), dtype=np.float32)
        stored: PixelArray = np.clip(img + 1024.0, 0, 4095).astype(np.uint16)
        return stored


def _age(birth: _dt.date, at: _dt.date) -> str:
    years = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def _uid(*parts: object) -> UID:
    """A UID that depends only on `parts`, so reruns give the same UIDs."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class _Patient:
    pid: str
    name: str
    utf8: bool
    sex: str
    birth: _dt.date


@dataclass(frozen=True)
class _Study:
    modality: str
    description: str
    body_part: str
    date: _dt.date
    time: str
    uid: str
    accession: str
    institution: str
    referring: str


@dataclass(frozen=True)
class _Templates:
    ct: Dataset
    ct_arr: PixelArray
    mr: Dataset
    mr_arr: PixelArray


def _load_templates(size: str) -> _Templates:
    """CT/MR header templates; for ct512 the CT template is turned into a 512x512 12-bit CT."""
    ct_ds, ct_arr = _load_template("CT_small.dcm")
    mr_ds, mr_arr = _load_template("MR_small.dcm")
    if size == "ct512":
        ct_ds.Rows = ct_ds.Columns = 512
        ct_ds.BitsAllocated, ct_ds.BitsStored, ct_ds.HighBit = 16, 12, 11
        ct_ds.PixelRepresentation = 0
        ct_ds.RescaleIntercept, ct_ds.RescaleSlope = -1024, 1
        ct_ds.PixelSpacing = [0.78125, 0.78125]
        ct_ds.WindowCenter, ct_ds.WindowWidth = 40, 400
    return _Templates(ct_ds, ct_arr, mr_ds, mr_arr)


def _draw_patient(rnd: random.Random, p: int, id_prefix: str) -> _Patient:
    # the order of the draws is part of the output format: do not reorder
    utf8 = rnd.random() < 0.1
    name = rnd.choice(UTF8_NAMES) if utf8 else f"{rnd.choice(LAST)}^{rnd.choice(FIRST)}"
    sex = rnd.choice("MFFMO" if p % 7 else "MF")
    birth = _dt.date(1930, 1, 1) + _dt.timedelta(days=rnd.randrange(0, 85 * 365))
    return _Patient(f"{id_prefix}{p + 1:05d}", name, utf8, sex, birth)


def _draw_study(
    rnd: random.Random, size: str, seed: int, p: int, s: int, patient: _Patient
) -> _Study:
    # the order of the draws is part of the output format: do not reorder
    modality = "CT" if (size == "ct512" or rnd.random() < 0.6) else "MR"
    description, body = rnd.choice(CT_STUDIES if modality == "CT" else MR_STUDIES)
    date = _dt.date(2015, 1, 1) + _dt.timedelta(days=rnd.randrange(0, 10 * 365))
    stime = f"{rnd.randrange(7, 20):02d}{rnd.randrange(60):02d}{rnd.randrange(60):02d}"
    return _Study(
        modality=modality,
        description=description,
        body_part=body,
        date=date,
        time=stime,
        uid=_uid("study", seed, size, patient.pid, s),
        accession=f"A{seed % 1000:03d}{p + 1:05d}{s + 1:02d}",
        institution=rnd.choice(INSTITUTIONS),
        referring=rnd.choice(REFERRING),
    )


def _series_dataset(
    template: Dataset,
    patient: _Patient,
    study: _Study,
    s: int,
    r: int,
    series_uid: str,
    for_uid: str,
    series_description: str,
) -> Dataset:
    """One copy of the template per series; instances then mutate only per-instance tags."""
    ds = copy.deepcopy(template)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.ImplementationClassUID = IMPL_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPL_VERSION
    if patient.utf8:
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient.name
    ds.PatientID = patient.pid
    ds.PatientBirthDate = patient.birth.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth, study.date)
    if "OtherPatientIDsSequence" in ds:
        del ds.OtherPatientIDsSequence
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    day = study.date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.InstanceCreationDate = day
    ds.StudyTime = study.time
    ds.SeriesTime = f"{study.time[:4]}{(int(study.time[4:]) + r) % 60:02d}"
    ds.AccessionNumber = study.accession
    ds.StudyID = f"{s + 1}"
    ds.StudyDescription = study.description
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = study.body_part
    ds.Modality = study.modality
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = study.referring
    ds.SeriesNumber = r + 1
    ds.Manufacturer = ds.get("Manufacturer", "") or "SYNTH"
    return ds


def _set_pixels(ds: Dataset, arr: PixelArray, codec: str | None) -> None:
    """Store `arr` in `ds`, compressed with `codec` or native (Explicit VR LE / deflated)."""
    if codec in PIXEL_CODECS:
        kw: dict[str, Any] = {"generate_instance_uid": False}
        if codec == "j2k":
            kw["j2k_cr"] = [10]
        ds.compress(CODECS[codec], arr, **kw)
        if codec == "j2k":  # lossy: PS3.3 C.7.6.1.1.5 attributes
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = 10
            ds.LossyImageCompressionMethod = "ISO_15444_1"
        return
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"
    ds["PixelData"].is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = (
        DeflatedExplicitVRLittleEndian if codec == "deflate" else ExplicitVRLittleEndian
    )


def _write(ds: Dataset, path: str) -> int:
    """Write `ds` as Part 10 to `path`; returns the file size."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


def _write_manifest(out: str, rows: list[ManifestRow]) -> None:
    with open(os.path.join(out, "manifest.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_HEADER)
        w.writerows(rows)


def generate(
    out: str,
    patients: int,
    studies: int,
    series: int,
    instances: int,
    size: str = "small",
    seed: int = 0,
    compress_fraction: float = 0.0,
    codecs: Sequence[str] | None = None,
    id_prefix: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write the corpus into `out` and return a summary dict (files, bytes, seconds, ...)."""
    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}; choose from {SIZES}")
    t0 = time.perf_counter()
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    id_prefix = f"S{seed}P" if id_prefix is None else id_prefix
    usable = _usable_codecs(list(codecs or []))
    tmpl = _load_templates(size)
    phantom = Phantom512() if size == "ct512" else None

    os.makedirs(out, exist_ok=True)
    manifest_rows: list[ManifestRow] = []
    nfiles = nbytes = 0
    codec_counts: dict[str, int] = {}
    series_counter = 0

    for p in range(patients):
        patient = _draw_patient(rnd, p, id_prefix)
        for s in range(studies):
            study = _draw_study(rnd, size, seed, p, s, patient)
            is_ct = study.modality == "CT"
            template, tmpl_arr = (tmpl.ct, tmpl.ct_arr) if is_ct else (tmpl.mr, tmpl.mr_arr)
            for r in range(series):
                series_counter += 1
                series_uid = _uid("series", seed, size, patient.pid, s, r)
                for_uid = _uid("for", seed, size, patient.pid, s)
                ser_desc = rnd.choice(CT_SERIES if is_ct else MR_SERIES)
                codec = None
                if usable and rnd.random() < compress_fraction:
                    codec = usable[series_counter % len(usable)]
                ds = _series_dataset(template, patient, study, s, r, series_uid, for_uid, ser_desc)
                z0 = -0.5 * instances * 5.0
                for i in range(instances):
                    sop_uid = _uid("sop", seed, size, patient.pid, s, r, i)
                    z = z0 + 5.0 * i
                    if phantom is not None:
                        arr = phantom.slice(z + 37.0 * r, rng)
                    else:
                        noise = rng.integers(-6, 7, size=tmpl_arr.shape, dtype=np.int16)
                        arr = (tmpl_arr + noise).astype(tmpl_arr.dtype)
                    ds.SOPInstanceUID = sop_uid
                    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                    ds.InstanceNumber = i + 1
                    ds.AcquisitionNumber = 1
                    ds.ImagePositionPatient = [-250.0, -250.0, round(z, 2)]
                    ds.SliceLocation = round(z, 2)
                    ds.ContentTime = (
                        f"{study.time[:2]}{(int(study.time[2:4]) + r) % 60:02d}{i % 60:02d}"
                    )
                    _set_pixels(ds, arr, codec)
                    rel = os.path.join(
                        f"p{p + 1:05d}", f"st{s + 1:02d}", f"se{r + 1:03d}", f"{i + 1:05d}.dcm"
                    )
                    size_bytes = _write(ds, os.path.join(out, rel))
                    nfiles += 1
                    nbytes += size_bytes
                    key = codec or "explicit-le"
                    codec_counts[key] = codec_counts.get(key, 0) + 1
                    manifest_rows.append(
                        (
                            rel,
                            patient.pid,
                            patient.name,
                            study.uid,
                            series_uid,
                            sop_uid,
                            study.modality,
                            str(ds.file_meta.TransferSyntaxUID),
                            size_bytes,
                        )
                    )

    _write_manifest(out, manifest_rows)
    dt = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "files": nfiles,
        "bytes": nbytes,
        "patients": patients,
        "studies": patients * studies,
        "series": patients * studies * series,
        "seconds": round(dt, 2),
        "codecs": codec_counts,
        "out": out,
    }
    if not quiet:
        cc = ",".join(f"{k}:{v}" for k, v in sorted(codec_counts.items()))
        print(
            f"files={nfiles} bytes={nbytes} ({nbytes / 1e6:.1f} MB) patients={patients} "
            f"studies={patients * studies} series={patients * studies * series} "
            f"size={size} seed={seed} ts=[{cc}] seconds={dt:.1f} out={out}"
        )
    return summary


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--studies-per-patient", type=int, default=2)
    ap.add_argument("--series-per-study", type=int, default=3)
    ap.add_argument("--instances-per-series", type=int, default=20)
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compress-fraction",
        type=float,
        default=0.0,
        help="fraction of series written in a compressed transfer syntax",
    )
    ap.add_argument(
        "--codecs",
        default="rle,j2k-lossless,j2k,jls-lossless,deflate",
        help=f"comma list used when --compress-fraction > 0 ({','.join(CODECS)})",
    )
    ap.add_argument(
        "--id-prefix",
        default=None,
        help="PatientID prefix (default S<seed>P, so corpora of different seeds "
        "do not share PatientIDs)",
    )
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    codecs = [c for c in a.codecs.split(",") if c] if a.compress_fraction > 0 else []
    generate(
        a.out,
        a.patients,
        a.studies_per_patient,
        a.series_per_study,
        a.instances_per_series,
        a.size,
        a.seed,
        a.compress_fraction,
        codecs,
        a.id_prefix,
        a.quiet,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
