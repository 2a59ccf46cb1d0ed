"""Query/retrieve benchmark: C-FIND, QIDO-RS, C-MOVE and C-GET of pacs, 10k to 1M instances.

At 10,000 and 100,000 instances, and on PostgreSQL at 100,000 against 1,000,000
(``--million``).

    python -m bench.query                              # 10k and 100k, SQLite and PostgreSQL
    python -m bench.query --million                    # plus 100k vs 1M on PostgreSQL (make bench)
    python -m bench.query --scales 2000 --reps 10      # quick run (about a minute)
    python -m bench.query --orthanc                    # plus Orthanc on the same data

How it works (bench/README.md has the long version):

* The index is filled with a synthetic population (10 instances a study, 2-4 series, CT/MR/CR,
  about 1,000 studies a year from 2015 on, one to three studies a patient) without DIMSE: a
  header-only pydicom Dataset per instance, ``storage.attributes.extract`` (the values ingest
  indexes), then either bench.bulk_load (default: the rows ``Repository.upsert_instance``
  writes, made by its own row builders, written with COPY on PostgreSQL and executemany on
  SQLite) or ``--fill upsert``: ``Repository.upsert_instance`` itself (what ``IngestService``
  calls after writing the blob), 1,000 instances per write transaction. New studies start
  ARCHIVED as ingest makes them, marked stable. The blobs of these instances do not exist
  (C-FIND and QIDO-RS never read them). The 10,000-instance population is the first tenth of
  the 100,000 one: the bench fills 10k, measures, adds 90k and measures again.
* ``pacs serve`` is (re)started after each fill on free loopback ports, one DIMSE process.
* C-FIND is timed with pynetdicom as the SCU on ONE open association (TCP_NODELAY on its
  socket, reactor poll delay 0.1 ms: the settings the server uses), from sending the request to
  the final response, and with DCMTK ``findscu`` per query (environment ``TCP_NODELAY=1``;
  process start and association included). QIDO-RS asks the same queries with httpx on one
  keep-alive connection. Every answer is counted against the population.
* ``--million``: two fresh PostgreSQL indexes, 100,000 and 1,000,000 instances, two servers
  running at once, and in each of ``--million-rounds`` rounds every query on both (order turned
  each round): the 1M / 100k ratio of each median, against the 1.5x target of issue 15.
* Retrieve: a real 300-instance CT study (512x512 16-bit, tests/factories/corpus.py) is stored
  with storescu, then moved with C-MOVE (pynetdicom SCU) to a DCMTK ``storescp`` the server
  knows as ``--peer DEST=127.0.0.1:PORT``, fetched with C-GET by ``getscu``, and sent by a bare
  pynetdicom chunked C-STORE of the same files to the same storescp (the library's ceiling).
* Orthanc (``--orthanc``) gets the same population as real DICOM files (the same headers plus
  an 8x8 pixel matrix) through its REST API ``POST /instances``, then the same C-FIND queries.

No timing is asserted; the exit code is 1 only when a run failed outright (a wrong number of
matches, a server that did not start, a retrieve that did not deliver every instance).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.client
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ingest import (
    CACHE_DIR,
    DEFAULT_POSTGRES,
    REPO,
    RESULTS_DIR,
    Corpus,
    Shape,
    _admin_conninfo,
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
    ensure_orthanc,
    free_port,
    http_ok,
    orthanc_config,
    processes_named,
    start_process,
    stop_process,
    wait_until,
)

CALLING_AET = "BENCHSCU"
DEST_AET = "DEST"
PACS_AET = "PACS"
START_TIMEOUT_S = 180.0
BACKENDS = ("sqlite", "postgres")

# population
UID_ROOT = "1.2.826.0.1.3680043.8.498.7731."
INSTANCES_PER_STUDY = 10
STUDIES_PER_YEAR = 1000
FIRST_DAY = _dt.date(2015, 1, 1)
SMITH_WINDOW = 990  # SMITH-like patients only start before this study: constant wildcard count
MONTH = ("20150601", "20150630")  # within the first year: the same matches at every scale >= 10k
SAMPLES = 20  # patients / studies rotated through by the exact-key queries
FILL_BATCH = 1000

# the 300-instance study for C-MOVE / C-GET
MOVE_LAYOUT = (1, 1, 3, 100)  # patients, studies, series, instances
MOVE_SEED = 31
MOVE_CACHE = "qr-move-ct512-v1"

# the targets
GOAL_EXACT_MS = 10.0
GOAL_WILDCARD_MS = 25.0
GOAL_SCALE_RATIO = 2.0
GOAL_MILLION_RATIO = 1.5  # issue 15: 1,000,000 against 100,000 instances, PostgreSQL
GOAL_MOVE_VS_BARE = 0.8

REACTOR_DELAY_S = 0.0001  # what pacs.dimse.tuning uses on the server side

STUDY_RETURN_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RETURN_KEYS = (
    "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "BodyPartExamined", "NumberOfSeriesRelatedInstances",
)


# ------------------------------------------------------------------------------ population

SYLLABLES = (
    "KA", "LO", "MER", "DAN", "VI", "TOR", "BEL", "RAS", "NO", "GUN", "FER", "HAL", "JO", "PRE",
    "WEN", "ZU", "OST", "EL", "BRA", "DU", "MAR", "TE", "LIN", "GAR", "RO", "SEN", "CHA", "KO",
)
FIRST_NAMES = (
    "JOHN", "MARY", "JAMES", "ANNA", "ROBERT", "LINDA", "MICHAEL", "SARAH", "DAVID", "EMMA",
    "PETER", "LUCY", "PAUL", "JULIA", "MARK", "CLAIRE", "OMAR", "YUKI", "ADA", "IVAN",
)
SMITHS = ("SMITH", "Smith", "SMITHSON", "Smithers", "SMIRNOV")
MODALITIES = {  # modality: (share, SOP class, instances per series, descriptions, body part)
    "CT": (0.5, "1.2.840.10008.5.1.4.1.1.2", (4, 3, 3),
           ("CT CHEST W CONTRAST", "CT HEAD WO", "CT ABDOMEN PELVIS"), "CHEST"),
    "MR": (0.3, "1.2.840.10008.5.1.4.1.1.4", (3, 3, 2, 2),
           ("MR BRAIN", "MR KNEE LEFT", "MR LUMBAR SPINE"), "BRAIN"),
    "CR": (0.2, "1.2.840.10008.5.1.4.1.1.1", (5, 5),
           ("XR CHEST PA LAT", "XR HAND RIGHT"), "CHEST"),
}
SERIES_NAMES = ("LOCALIZER", "AXIAL", "CORONAL", "SAGITTAL", "POST CONTRAST", "T1", "T2")
INSTITUTIONS = ("GENERAL HOSPITAL", "ST MARY CLINIC", "UNIVERSITY MEDICAL CENTER")
REFERRING = ("HOUSE^GREGORY", "GREY^MEREDITH", "WHO^JOHN", "", "QUINN^MICHAELA")


@dataclass(frozen=True)
class PatientSpec:
    pid: str
    name: str
    sex: str
    birth: str


@dataclass(frozen=True)
class SeriesSpec:
    uid: str
    number: int
    modality: str
    sop_class: str
    description: str
    instances: int


@dataclass(frozen=True)
class StudySpec:
    index: int
    patient: PatientSpec
    uid: str
    date: str
    time: str
    accession: str
    description: str
    referring: str
    institution: str
    modality: str
    body_part: str
    series: tuple[SeriesSpec, ...]

    @property
    def smith(self) -> bool:
        return self.patient.name.upper().startswith("SMI")


def population(studies: int, seed: int = 1) -> list[StudySpec]:
    """`studies` studies of 10 instances; population(n)[:k] == population(k) (drawn in order)."""
    rnd = random.Random(seed)
    out: list[StudySpec] = []
    patient: PatientSpec | None = None
    left = 0
    p = -1
    for k in range(studies):
        if left == 0:
            p += 1
            left = rnd.choice((1, 1, 1, 2, 2, 3))
            patient = _patient(rnd, p, k)
        left -= 1
        assert patient is not None
        out.append(_study(rnd, k, patient))
    return out


def _patient(rnd: random.Random, p: int, first_study: int) -> PatientSpec:
    surname = "".join(rnd.choice(SYLLABLES) for _ in range(rnd.choice((2, 2, 3))))
    given = rnd.choice(FIRST_NAMES)
    if p % 25 == 3 and first_study < SMITH_WINDOW:
        surname = SMITHS[(p // 25) % len(SMITHS)]
        given = given.capitalize() if surname[1].islower() else given
    birth = _dt.date(1930, 1, 1) + _dt.timedelta(days=rnd.randrange(0, 85 * 365))
    return PatientSpec(f"QR{p + 1:07d}", f"{surname}^{given}", rnd.choice("MF"),
                       birth.strftime("%Y%m%d"))


def _study(rnd: random.Random, k: int, patient: PatientSpec) -> StudySpec:
    draw = rnd.random()
    modality = "CR"
    total = 0.0
    for name, (share, *_rest) in MODALITIES.items():
        total += share
        if draw < total:
            modality = name
            break
    _, sop_class, split, descriptions, body = MODALITIES[modality]
    day = FIRST_DAY + _dt.timedelta(days=int(k * 365 / STUDIES_PER_YEAR) + rnd.randrange(0, 3))
    series = tuple(
        SeriesSpec(
            uid=f"{UID_ROOT}2.{k}.{r + 1}", number=r + 1, modality=modality, sop_class=sop_class,
            description=rnd.choice(SERIES_NAMES), instances=n,
        )
        for r, n in enumerate(split)
    )
    assert sum(s.instances for s in series) == INSTANCES_PER_STUDY
    return StudySpec(
        index=k, patient=patient, uid=f"{UID_ROOT}1.{k}", date=day.strftime("%Y%m%d"),
        time=f"{rnd.randrange(7, 20):02d}{rnd.randrange(60):02d}{rnd.randrange(60):02d}",
        accession=f"A{k + 1:08d}", description=rnd.choice(descriptions),
        referring=rnd.choice(REFERRING), institution=rnd.choice(INSTITUTIONS),
        modality=modality, body_part=body, series=series,
    )


def instance_datasets(studies: Sequence[StudySpec], pixels: bool = False) -> Iterator[Any]:
    """One Dataset per instance, header only unless `pixels` (an 8x8 16-bit matrix, file meta).

    The same object is reused and changed in place: consume each before taking the next.
    """
    for st in studies:
        ds = study_dataset(st, pixels)
        for se in st.series:
            set_series(ds, se, pixels)
            for i in range(se.instances):
                set_instance(ds, st, se, i, pixels)
                yield ds


def instance_uid(st: StudySpec, se: SeriesSpec, i: int) -> str:
    return f"{UID_ROOT}3.{st.index}.{se.number}.{i + 1}"


def study_dataset(st: StudySpec, pixels: bool = False) -> Any:
    """The header the instances of one study share (``set_series`` and ``set_instance`` fill
    in the rest)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = st.patient.name
    ds.PatientID = st.patient.pid
    ds.PatientBirthDate = st.patient.birth
    ds.PatientSex = st.patient.sex
    ds.StudyInstanceUID = st.uid
    ds.StudyDate = st.date
    ds.StudyTime = st.time
    ds.AccessionNumber = st.accession
    ds.StudyID = str(st.index + 1)
    ds.StudyDescription = st.description
    ds.ReferringPhysicianName = st.referring
    ds.InstitutionName = st.institution
    ds.SeriesDate = st.date
    ds.BodyPartExamined = st.body_part
    ds.Manufacturer = "BENCH"
    ds.ContentDate = st.date
    if pixels:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(128)
    return ds


def set_series(ds: Any, se: SeriesSpec, pixels: bool = False) -> None:
    ds.SOPClassUID = se.sop_class
    ds.SeriesInstanceUID = se.uid
    ds.SeriesNumber = se.number
    ds.SeriesDescription = se.description
    ds.Modality = se.modality
    if pixels:
        ds.file_meta.MediaStorageSOPClassUID = se.sop_class


def set_instance(ds: Any, st: StudySpec, se: SeriesSpec, i: int, pixels: bool = False) -> None:
    uid = instance_uid(st, se, i)
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = i + 1
    if pixels:
        ds.file_meta.MediaStorageSOPInstanceUID = uid


FILL_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"
FILL_SOURCE_AE = "BENCHFILL"


def population_rows(studies: Sequence[StudySpec]) -> Iterator[Any]:
    """The ``storage.index.InstanceRow`` of every instance, as ingest makes it from the
    instance's header: ``storage.attributes.extract`` and ``request_attributes`` of the
    dataset ``instance_datasets`` yields, no blob written (the row names the SHA-256 of the
    SOP Instance UID as its key).

    ``extract`` runs once per series, on its first instance: the instances of a series
    differ only in SOPInstanceUID and InstanceNumber, whose index values (the UID's text, the
    number) are set here for the others. tests/bench checks that every row equals the one
    ``extract`` makes from the instance's own dataset.
    """
    from pydicom.config import disable_value_validation

    from storage.attributes import Level, extract, request_attributes
    from storage.blobs import BlobInfo
    from storage.index import InstanceRow

    for st in studies:
        with disable_value_validation():  # (the values are valid: a third of the time saved)
            ds = study_dataset(st)
        for se in st.series:
            with disable_value_validation():
                set_series(ds, se)
                set_instance(ds, st, se, 0)
            values = extract(ds)
            requested = request_attributes(ds)
            for i in range(se.instances):
                uid = instance_uid(st, se, i)
                image = {**values[Level.IMAGE], "sop_instance_uid": uid, "instance_number": i + 1}
                key = hashlib.sha256(uid.encode()).hexdigest()
                yield InstanceRow(
                    values={**values, Level.IMAGE: image},
                    request_attributes=requested,
                    transfer_syntax_uid=FILL_TRANSFER_SYNTAX,
                    blob=BlobInfo(key=key, size=1400, sha256=key),
                    source_ae=FILL_SOURCE_AE,
                )


def file_bytes(ds: Any) -> bytes:
    from pydicom import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ fill


@dataclass
class Fill:
    target: str
    instances: int
    seconds: float
    method: str

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0


FILL_METHODS = ("bulk", "upsert")
FILL_HOW = {
    "bulk": "bench.bulk_load (COPY / executemany, the rows upsert_instance writes)",
    "upsert": "Repository.upsert_instance, 1,000 per transaction",
}


def fill_pacs(
    database_url: str, data_dir: Path, studies: Sequence[StudySpec], method: str = "upsert"
) -> float:
    """Index `studies` the way ingest indexes them, without blobs; returns seconds.

    ``upsert``: ``Repository.upsert_instance`` (the ingest service's index call), 1,000
    instances per write transaction. ``bulk``: the same rows written by bench.bulk_load
    (PostgreSQL COPY, SQLite executemany). Either way the studies start ARCHIVED, as ingest
    makes them (``IngestService.new_study_state``), and are marked stable.
    """
    from pacs.serve import open_services
    from pacs.services.workflow import VISIBLE_TO_VIEWERS
    from pacs.settings import Settings
    from storage.index import UpsertOutcome

    if method not in FILL_METHODS:
        raise ValueError(f"fill method {method!r}: choose from {', '.join(FILL_METHODS)}")
    settings = Settings(data_dir=data_dir, database_url=database_url)
    expected = len(studies) * INSTANCES_PER_STUDY
    start = time.perf_counter()
    with open_services(settings) as services:
        state = services.ingest.new_study_state  # what C-STORE would give a new study
        if method == "bulk":
            from bench.bulk_load import bulk_load

            # Settled long ago, as in a real archive (below): stable as they are written.
            loaded = bulk_load(services.index, population_rows(studies), initial_state=state,
                               stable_at=_dt.datetime.now(_dt.UTC))
            inserted = loaded.instances
        else:
            batch: list[Any] = []
            inserted = 0

            def flush() -> int:
                with services.index.unit_of_work(write=True) as repo:
                    done = 0
                    for row in batch:
                        result = repo.upsert_instance(
                            row, initial_state=state, overwrite=False,
                            visible_states=VISIBLE_TO_VIEWERS)
                        done += result.outcome is UpsertOutcome.INSERTED
                batch.clear()
                return done

            for row in population_rows(studies):
                batch.append(row)
                if len(batch) >= FILL_BATCH:
                    inserted += flush()
            if batch:
                inserted += flush()
        seconds = time.perf_counter() - start
        if inserted != expected:
            raise RuntimeError(f"fill inserted {inserted} instances, expected {expected}")
        if method == "upsert":
            # Settled long ago, as in a real archive: left unstable, the server's QA stability
            # task would run the pixel check on files that do not exist here and quarantine
            # them.
            with services.index.unit_of_work(write=True) as repo:
                for study in studies:
                    repo.studies.mark_stable(study.uid)
        if not services.index.is_sqlite:
            # What autovacuum does by itself soon after a bulk load (since PostgreSQL 13 it
            # vacuums after inserts too); done here so that it does not happen in the middle
            # of a measurement.
            engine = services.index.engine.execution_options(isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
    return seconds


class _OrthancPoster:
    """POST /instances from several threads, each with a keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def post(self, body: bytes) -> None:
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=60)
                self.local.conn = conn
            try:
                conn.request("POST", "/instances", body, {"Content-Type": "application/dicom"})
                response = conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                # Orthanc closes idle keep-alive connections: reconnect and send again
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"Orthanc POST /instances: HTTP {response.status} {data[:200]!r}")


def fill_orthanc(port: int, studies: Sequence[StudySpec], threads: int = 4) -> float:
    poster = _OrthancPoster(port)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        chunk: list[bytes] = []
        for ds in instance_datasets(studies, pixels=True):
            chunk.append(file_bytes(ds))
            if len(chunk) >= 200:
                list(pool.map(poster.post, chunk))
                chunk = []
        list(pool.map(poster.post, chunk))
    return time.perf_counter() - start


# --------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    goal_ms: float | None  # the absolute target for the pynetdicom median
    dimse: bool = True  # False: QIDO-RS only (C-FIND has no paging)


PAGE = (100, 400)  # limit, offset: the fifth page of a viewer's study list
CASES = (
    Case("pid", "exact PatientID", GOAL_EXACT_MS),
    Case("name", "PatientName=smi*", GOAL_WILDCARD_MS),
    Case("date", "StudyDate 1 month", GOAL_WILDCARD_MS),
    Case("all", "universal (cap 1000)", None),
    Case("series", "SERIES in study", GOAL_EXACT_MS),
    Case("page", f"study list page (QIDO limit={PAGE[0]}&offset={PAGE[1]})", None, dimse=False),
)
DIMSE_CASES = tuple(c for c in CASES if c.dimse)


@dataclass(frozen=True)
class Probe:
    """One query: its keys (keyword -> value, '' = return key) and the expected match count."""

    level: str
    keys: dict[str, str]
    expected: int
    at_most: bool = False  # expected is an upper bound (Orthanc's result limit)
    page: tuple[int, int] | None = None  # QIDO-RS limit and offset


def probes(studies: Sequence[StudySpec], cap: int = 1000) -> dict[str, list[Probe]]:
    """For each case, the queries rotated through, with the number of answers each must give."""
    study_keys = dict.fromkeys(STUDY_RETURN_KEYS, "")
    series_keys = dict.fromkeys(SERIES_RETURN_KEYS, "")
    by_patient: dict[str, int] = {}
    for st in studies:
        by_patient[st.patient.pid] = by_patient.get(st.patient.pid, 0) + 1
    step = max(1, len(studies) // SAMPLES)
    picks = [studies[i] for i in range(step // 2, len(studies), step)][:SAMPLES]
    smiths = sum(st.smith for st in studies)
    month = sum(MONTH[0] <= st.date <= MONTH[1] for st in studies)
    return {
        "pid": [
            Probe("STUDY", {**study_keys, "PatientID": st.patient.pid}, by_patient[st.patient.pid])
            for st in picks
        ],
        "name": [Probe("STUDY", {**study_keys, "PatientName": "smi*"}, smiths)],
        "date": [Probe("STUDY", {**study_keys, "StudyDate": f"{MONTH[0]}-{MONTH[1]}"}, month)],
        "all": [Probe("STUDY", dict(study_keys), min(cap, len(studies)))],
        "series": [
            Probe("SERIES", {**series_keys, "StudyInstanceUID": st.uid}, len(st.series))
            for st in picks
        ],
        "page": [Probe("STUDY", dict(study_keys),
                       max(0, min(PAGE[0], len(studies) - PAGE[1])), page=PAGE)],
    }


def identifier(probe: Probe) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = probe.level
    for keyword, value in probe.keys.items():
        setattr(ds, keyword, value)
    return ds


@dataclass
class CaseResult:
    times_ms: list[float] = field(default_factory=list)
    findscu_ms: list[float] = field(default_factory=list)
    qido_ms: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    @property
    def p90(self) -> float | None:
        return _percentile(self.times_ms, 0.9)

    @property
    def findscu_median(self) -> float | None:
        return statistics.median(self.findscu_ms) if self.findscu_ms else None

    @property
    def qido_median(self) -> float | None:
        return statistics.median(self.qido_ms) if self.qido_ms else None

    @property
    def qido_p90(self) -> float | None:
        return _percentile(self.qido_ms, 0.9)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def tune_scu(assoc: Any) -> None:
    """TCP_NODELAY and a 0.1 ms reactor poll delay on our side of an association (perf-notes:
    pynetdicom's defaults, Nagle on and a 1 ms poll sleep, would be the latency floor)."""
    raw = assoc.dul.socket.socket
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc.dul._run_loop_delay = REACTOR_DELAY_S


def _scu_ae(contexts: Sequence[str]) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=CALLING_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    ae.maximum_pdu_size = 0
    for uid in contexts:
        ae.add_requested_context(uid)
    return ae


FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
PENDING = (0xFF00, 0xFF01)


def run_find(assoc: Any, probe: Probe) -> tuple[float, int]:
    """One C-FIND on the open association: (ms from request to final response, matches)."""
    count = 0
    start = time.perf_counter()
    final = None
    for status, _ in assoc.send_c_find(identifier(probe), FIND_MODEL):
        if status is None:
            raise RuntimeError("C-FIND: no response (association aborted or timed out)")
        if status.Status in PENDING:
            count += 1
        else:
            final = int(status.Status)
    elapsed = (time.perf_counter() - start) * 1000
    if final != 0x0000:
        raise RuntimeError(f"C-FIND final status 0x{final or 0:04X}")
    return elapsed, count


def _check_count(case: str, probe: Probe, got: int) -> str | None:
    ok = got <= probe.expected and got > 0 if probe.at_most else got == probe.expected
    if ok:
        return None
    return f"{case}: {got} matches, expected {'at most ' if probe.at_most else ''}{probe.expected}"


def dimse_cases(cases: dict[str, list[Probe]]) -> dict[str, list[Probe]]:
    """The cases C-FIND asks (not the QIDO-RS-only ones)."""
    return {key: plist for key, plist in cases.items() if key in {c.key for c in DIMSE_CASES}}


def measure_finds(
    port: int, aet: str, cases: dict[str, list[Probe]], reps: int, all_reps: int
) -> dict[str, CaseResult]:
    """Every case `reps` times (the universal one `all_reps`) on one association, after 3
    unmeasured warm-up queries per case."""
    ae = _scu_ae([FIND_MODEL])
    assoc = ae.associate(LOOPBACK, port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"association with {aet} on port {port} was not accepted")
    tune_scu(assoc)
    results: dict[str, CaseResult] = {}
    try:
        for case, plist in cases.items():
            result = results.setdefault(case, CaseResult())
            n = all_reps if case == "all" else reps
            wrong: list[str] = []
            try:
                for i in range(n + 3):
                    probe = plist[i % len(plist)]
                    ms, got = run_find(assoc, probe)
                    problem = _check_count(case, probe, got)
                    if problem:  # keep timing: the report shows both the figure and the error
                        wrong.append(problem)
                    if i >= 3:
                        result.times_ms.append(ms)
                        result.matches.append(got)
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                if not assoc.is_established:
                    break
            if wrong and result.error is None:
                result.error = (
                    f"wrong answer in {len(wrong)} of {n + 3} queries, e.g. {wrong[0]}"
                )
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return results


def findscu_argv(port: int, aet: str, probe: Probe) -> list[str]:
    argv = ["findscu", "-v", "-S", "-aet", CALLING_AET, "-aec", aet, LOOPBACK, str(port)]
    argv += ["-k", f"QueryRetrieveLevel={probe.level}"]
    for keyword, value in probe.keys.items():
        argv += ["-k", f"{keyword}={value}" if value else keyword]
    return argv


def measure_findscu(
    port: int, aet: str, cases: dict[str, list[Probe]], reps: int, results: dict[str, CaseResult]
) -> None:
    """`reps` findscu processes per case (TCP_NODELAY=1), wall time including process start."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    for case, plist in cases.items():
        result = results.setdefault(case, CaseResult())
        for i in range(reps):
            probe = plist[i % len(plist)]
            start = time.perf_counter()
            done = subprocess.run(
                findscu_argv(port, aet, probe), capture_output=True, env=env, timeout=300,
                check=False,
            )
            ms = (time.perf_counter() - start) * 1000
            text = (done.stdout + done.stderr).decode(errors="replace")
            got = sum(
                1 for line in text.splitlines() if "Find Response:" in line and "Pending" in line
            )
            problem = None
            if done.returncode != 0:
                problem = f"findscu exit {done.returncode}: {text.strip().splitlines()[-1:]}"
            else:
                problem = _check_count(f"findscu {case}", probe, got)
            if problem:
                result.error = result.error or problem
                if done.returncode != 0:
                    break
            result.findscu_ms.append(ms)


# ------------------------------------------------------------------------------------ QIDO


QIDO_ACCEPT = "application/dicom+json"


def qido_request(probe: Probe) -> tuple[str, list[tuple[str, str]]]:
    """The QIDO-RS request asking what the C-FIND probe asks: path (under /dicom-web) and
    query parameters. Its default return keys (PS3.18 Table 10.6.3-3/-4) include every key the
    C-FIND asks for (STUDY_RETURN_KEYS, SERIES_RETURN_KEYS)."""
    if probe.level == "SERIES":
        return f"/studies/{probe.keys['StudyInstanceUID']}/series", []
    params = [(k, v) for k, v in probe.keys.items() if v]
    if probe.page is not None:
        params += [("limit", str(probe.page[0])), ("offset", str(probe.page[1]))]
    return "/studies", params


def qido_client(http_port: int) -> Any:
    """httpx, one keep-alive connection, TCP_NODELAY, no compression."""
    import httpx

    transport = httpx.HTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    return httpx.Client(
        base_url=f"http://{LOOPBACK}:{http_port}/dicom-web", transport=transport, timeout=600,
        headers={"Accept": QIDO_ACCEPT, "Accept-Encoding": "identity"},
    )


def run_qido(client: Any, probe: Probe) -> tuple[float, int]:
    """One QIDO-RS request: (ms from sending it to the last byte of the body, matches)."""
    path, params = qido_request(probe)
    start = time.perf_counter()
    response = client.get(path, params=params)
    body = response.content
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code == 204:
        return elapsed, 0
    if response.status_code != 200:
        raise RuntimeError(f"QIDO-RS {path}: HTTP {response.status_code} {body[:200]!r}")
    return elapsed, len(json.loads(body))


def measure_qido(
    http_port: int, cases: dict[str, list[Probe]], reps: int, all_reps: int,
    results: dict[str, CaseResult],
) -> None:
    """Every case as QIDO-RS, `reps` times (the universal one `all_reps`), after 3 unmeasured
    warm-up requests per case, on one keep-alive connection."""
    with qido_client(http_port) as client:
        for case, plist in cases.items():
            result = results.setdefault(case, CaseResult())
            n = all_reps if case == "all" else reps
            try:
                for i in range(n + 3):
                    probe = plist[i % len(plist)]
                    ms, got = run_qido(client, probe)
                    problem = _check_count(f"QIDO-RS {case}", probe, got)
                    if problem:
                        result.error = result.error or problem
                    if i >= 3:
                        result.qido_ms.append(ms)
            except Exception as exc:
                result.error = result.error or f"QIDO-RS: {type(exc).__name__}: {exc}"


# -------------------------------------------------------------------------------- retrieve


@dataclass
class RetrieveResult:
    move_s: list[float] = field(default_factory=list)
    bare_s: list[float] = field(default_factory=list)
    get_s: list[float] = field(default_factory=list)
    instances: int = 0
    nbytes: int = 0
    error: str | None = None

    def rate(self, seconds: list[float]) -> float | None:
        return self.instances / statistics.median(seconds) if seconds else None


def ensure_move_corpus(cache: Path = CACHE_DIR) -> Corpus:
    """One CT study of 300 512x512 16-bit instances (3 series of 100), generated once."""
    import csv

    import pydicom

    root = cache / MOVE_CACHE
    if not (root / ".complete").exists():
        from tests.factories.corpus import generate

        if root.exists():
            shutil.rmtree(root)
        patients, studies, series, instances = MOVE_LAYOUT
        log(f"corpus: generating the 300-instance CT study in {root}")
        generate(str(root), patients, studies, series, instances, size="ct512", seed=MOVE_SEED,
                 id_prefix="QRMOVE", quiet=True)
        (root / ".complete").write_text("ok\n")
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    files = tuple(row["path"] for row in rows)
    ds = pydicom.dcmread(root / files[0], stop_before_pixels=True)
    contexts = frozenset({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))})
    nbytes = sum((root / f).stat().st_size for f in files)
    return Corpus("ct512", root, files, nbytes, contexts)


def move_study_uid(corpus: Corpus) -> str:
    import pydicom

    return str(pydicom.dcmread(corpus.root / corpus.files[0], stop_before_pixels=True)
               .StudyInstanceUID)


class Storescp:
    """DCMTK storescp writing files: the C-MOVE destination (DEST)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.out = work / "received"
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["storescp", "-aet", DEST_AET, "-od", str(self.out), str(self.port)]
        self.proc = start_process(argv, self.work / "storescp.log", env=server_env())
        wait_until(lambda: port_listening(self.port), self.proc, 30, "storescp")

    def take(self) -> int:
        """Files received since the last call (and remove them)."""
        files = [p for p in self.out.rglob("*") if p.is_file()]
        for p in files:
            p.unlink()
        return len(files)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def run_move(port: int, aet: str, study_uid: str) -> tuple[float, int]:
    """C-MOVE of the study to DEST from an open association: (seconds, completed sub-ops)."""
    from pydicom.dataset import Dataset

    ae = _scu_ae([MOVE_MODEL])
    assoc = ae.associate(LOOPBACK, port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError("C-MOVE: association not accepted")
    tune_scu(assoc)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    try:
        start = time.perf_counter()
        final = None
        for status, _ in assoc.send_c_move(ds, DEST_AET, MOVE_MODEL):
            if status is None:
                raise RuntimeError("C-MOVE: no response")
            if status.Status not in PENDING:
                final = status
        seconds = time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    if final is None or int(final.Status) != 0:
        raise RuntimeError(f"C-MOVE final status {final.Status if final else None}")
    return seconds, int(final.get("NumberOfCompletedSuboperations", -1))


def run_bare_send(dest_port: int, corpus: Corpus) -> float:
    """pynetdicom's own chunked C-STORE of the files to storescp: one association, TCP_NODELAY,
    0.1 ms reactor delay, unlimited PDU, ``STORE_SEND_CHUNKED_DATASET`` (what pacs uses)."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=CALLING_AET)
    ae.maximum_pdu_size = 0
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    for sop_class, ts in corpus.contexts:
        ae.add_requested_context(sop_class, [ts])
    paths = [str(corpus.root / f) for f in corpus.files]
    start = time.perf_counter()
    assoc = ae.associate(LOOPBACK, dest_port, ae_title=DEST_AET)
    try:
        if not assoc.is_established:
            raise RuntimeError("bare send: association with storescp not accepted")
        tune_scu(assoc)
        for path in paths:
            status = assoc.send_c_store(path)
            if status is None or int(status.Status) != 0:
                raise RuntimeError(f"bare send: C-STORE of {path} failed: {status}")
        assoc.release()
        return time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


def run_getscu(port: int, aet: str, study_uid: str, out: Path) -> tuple[float, int]:
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        p.unlink()
    argv = [
        "getscu", "-S", "-aet", CALLING_AET, "-aec", aet, "-od", str(out), LOOPBACK, str(port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
    ]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"},
                          timeout=600, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-2:]
        raise RuntimeError(f"getscu exit {done.returncode}: {tail}")
    got = sum(1 for p in out.iterdir() if p.is_file())
    for p in out.iterdir():
        p.unlink()
    return seconds, got


def measure_retrieve(
    port: int, aet: str, corpus: Corpus, dest: Storescp, reps: int, work: Path
) -> RetrieveResult:
    """C-MOVE, bare send and C-GET, interleaved `reps` times; every run must deliver it all."""
    result = RetrieveResult(instances=len(corpus.files), nbytes=corpus.nbytes)
    study_uid = move_study_uid(corpus)
    n = len(corpus.files)
    try:
        dest.take()
        for _ in range(reps):
            os.sync()
            seconds, completed = run_move(port, aet, study_uid)
            received = dest.take()
            if completed != n or received != n:
                raise RuntimeError(
                    f"C-MOVE: {completed} sub-operations completed, storescp wrote {received}, "
                    f"expected {n}"
                )
            result.move_s.append(seconds)
            os.sync()
            result.bare_s.append(run_bare_send(dest.port, corpus))
            received = dest.take()
            if received != n:
                raise RuntimeError(f"bare send: storescp wrote {received} files, expected {n}")
            os.sync()
            seconds, got = run_getscu(port, aet, study_uid, work / "getscu")
            if got != n:
                raise RuntimeError(f"C-GET: getscu wrote {got} files, expected {n}")
            result.get_s.append(seconds)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def store_move_study(corpus: Corpus, port: int, aet: str, work: Path) -> None:
    profile = write_storescu_profile(corpus.contexts, work / "storescu-move.cfg")
    outcome = send(corpus, profile, port, aet, Shape("move", "ct512", 1), work)
    if outcome.error:
        raise RuntimeError(f"storing the 300-instance study failed: {outcome.error}")


# --------------------------------------------------------------------------------- servers


class PacsServer:
    def __init__(self, command: list[str], work: Path, data_dir: Path, database_url: str,
                 dest_port: int) -> None:
        self.command = command
        self.work = work
        self.data_dir = data_dir
        self.database_url = database_url
        self.dest_port = dest_port
        self.aet = PACS_AET
        self.port = 0
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port, self.http_port = free_port(), free_port()
        http_port = self.http_port
        argv = [
            *self.command, "serve", "--data-dir", str(self.data_dir), "--ae-title", self.aet,
            "--dimse-port", str(self.port), "--http-port", str(http_port), "--http-host",
            LOOPBACK, "--database-url", self.database_url, "--dimse-processes", "1",
            "--peer", f"{DEST_AET}={LOOPBACK}:{self.dest_port}",
        ]
        self.proc = start_process(argv, self.work / "pacs.log", env=server_env(), cwd=REPO)
        health = f"http://{LOOPBACK}:{http_port}/health"
        wait_until(lambda: http_ok(health), self.proc, START_TIMEOUT_S, "pacs serve")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self) -> str:
        try:
            return "\n".join(
                (self.work / "pacs.log").read_text(errors="replace").splitlines()[-15:]
            )
        except OSError:
            return ""


class BenchOrthanc(Orthanc):
    """bench/orthanc.py's isolated Orthanc, plus what Q/R needs: the C-MOVE destination and
    the 1,000-result cap of the universal query (``LimitFindResults``)."""

    dest_port: int = 0

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config = orthanc_config(
            self.work, self.http_port, self.dicom_port, self.aet, self.calling_aet
        )
        config["DicomModalities"]["dest"] = [DEST_AET, LOOPBACK, self.dest_port]
        config["LimitFindResults"] = 1000
        config["HttpThreadsCount"] = 8
        path = self.work / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.proc = start_process(
            [self.binary, str(path)], self.work / "orthanc.log", env=self.env, cwd=self.work
        )
        wait_until(lambda: http_ok(f"{self.url}/system"), self.proc, 60, "Orthanc")


# ------------------------------------------------------------------------------------ runs


@dataclass
class ScaleUp:
    """The interleaved comparison of two PostgreSQL indexes (``--million``)."""

    low: int
    high: int
    rounds: int = 0
    results: dict[tuple[int, str], CaseResult] = field(default_factory=dict)
    matches: dict[tuple[int, str], int] = field(default_factory=dict)
    # per round and client ("find", "qido"): median at high / median at low
    round_ratios: dict[tuple[str, str], list[float]] = field(default_factory=dict)


@dataclass
class Results:
    finds: dict[tuple[str, int, str], CaseResult] = field(default_factory=dict)
    matches: dict[tuple[str, int, str], int] = field(default_factory=dict)
    fills: dict[tuple[str, int], Fill] = field(default_factory=dict)
    retrieves: dict[str, RetrieveResult] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    scale_up: ScaleUp | None = None


def _find_phase(
    res: Results, target: str, scale: int, port: int, aet: str, studies: Sequence[StudySpec],
    args: argparse.Namespace, orthanc: bool = False, http_port: int | None = None,
) -> None:
    cases = probes(studies)
    if orthanc and len(studies) > 1000:
        cases["all"] = [Probe("STUDY", cases["all"][0].keys, 1000, at_most=True)]
    log(f"  {target} @ {scale}: C-FIND, pynetdicom SCU, {args.reps} reps per query")
    results = measure_finds(port, aet, dimse_cases(cases), args.reps, args.all_reps)
    if args.findscu_reps > 0:
        log(f"  {target} @ {scale}: C-FIND, findscu, {args.findscu_reps} per query")
        measure_findscu(port, aet, dimse_cases(cases), args.findscu_reps, results)
    qido = http_port is not None and args.qido_reps > 0
    if qido:
        assert http_port is not None
        log(f"  {target} @ {scale}: QIDO-RS, httpx, {args.qido_reps} reps per query")
        measure_qido(http_port, cases, args.qido_reps, args.all_reps, results)
    for case in CASES:
        if not case.dimse and not qido:
            continue
        result = results.get(case.key, CaseResult(error="not run"))
        res.finds[(target, scale, case.key)] = result
        res.matches[(target, scale, case.key)] = cases[case.key][0].expected
        if result.error:
            res.failures.append(f"{target} @ {scale}, {case.title}: {result.error}")
        line = f"    {case.title:22s} median {_ms(result.median)} p90 {_ms(result.p90)}"
        line += f" findscu {_ms(result.findscu_median)} QIDO {_ms(result.qido_median)}"
        line += f" ({cases[case.key][0].expected} matches)"
        log(line + (f" ERROR {result.error}" if result.error else ""))


def _ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.1f}"


def run_pacs(
    res: Results, backend: str, scales: Sequence[int], args: argparse.Namespace, root: Path,
    command: list[str], postgres: str, corpus: Corpus | None,
) -> None:
    target = f"pacs-{backend}"
    work = root / target
    work.mkdir(parents=True)
    data_dir = work / "data"
    dest = Storescp(work / "dest")
    server: PacsServer | None = None
    try:
        with _database(backend, postgres, data_dir) as url:
            dest.start()
            server = PacsServer(command, work, data_dir, url, dest.port)
            filled = 0
            for scale in scales:
                studies = population(scale // INSTANCES_PER_STUDY)
                log(f"{target}: filling the index to {scale} instances "
                    f"({len(studies)} studies, +{(len(studies) - filled) * 10} instances)")
                seconds = fill_pacs(url, data_dir, studies[filled:], args.fill)
                res.fills[(target, scale)] = Fill(
                    target, (len(studies) - filled) * INSTANCES_PER_STUDY, seconds,
                    FILL_HOW[args.fill],
                )
                log(f"  filled in {seconds:.1f} s ({res.fills[(target, scale)].rate:.0f} inst/s)")
                filled = len(studies)
                server.start()
                try:
                    _find_phase(res, target, scale, server.port, server.aet, studies, args,
                                http_port=server.http_port)
                    if corpus is not None and scale == scales[-1] and args.retrieve_reps > 0:
                        log(f"  {target} @ {scale}: storing the 300-instance study (storescu)")
                        store_move_study(corpus, server.port, server.aet, work)
                        log(f"  {target} @ {scale}: C-MOVE / bare send / C-GET, "
                            f"{args.retrieve_reps} each")
                        ret = measure_retrieve(server.port, server.aet, corpus, dest,
                                               args.retrieve_reps, work)
                        _log_retrieve(target, ret)
                        res.retrieves[target] = ret
                        if ret.error:
                            res.failures.append(f"{target} retrieve: {ret.error}")
                finally:
                    server.stop()
    except Exception as exc:
        res.failures.append(f"{target}: {type(exc).__name__}: {exc}")
        log(f"{target} FAILED: {type(exc).__name__}: {exc}")
        if server is not None:
            tail = server.log_tail()
            if tail:
                log("  last lines of the pacs log:\n" + _indent(tail))
    finally:
        if server is not None:
            server.stop()
        dest.stop()


class FindAssociation:
    """One C-FIND association with a server, kept open (opened again if the server closed it
    while it was idle)."""

    def __init__(self, port: int, aet: str) -> None:
        self.port, self.aet = port, aet
        self.ae = _scu_ae([FIND_MODEL])
        self.assoc: Any = None

    def find(self, probe: Probe) -> tuple[float, int]:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(LOOPBACK, self.port, ae_title=self.aet)
            if not self.assoc.is_established:
                raise RuntimeError(f"association with {self.aet} on {self.port} not accepted")
            tune_scu(self.assoc)
        return run_find(self.assoc, probe)

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()


def run_scale_up(
    res: Results, args: argparse.Namespace, root: Path, command: list[str], postgres: str
) -> None:
    """``--million``: PostgreSQL indexes of LOW and HIGH instances side by side, two servers,
    every query case measured on both in each round, the order turned each round."""
    low, high = args.million_scales
    up = res.scale_up = ScaleUp(low, high)
    target = "pacs-postgres"
    servers: dict[int, PacsServer] = {}
    clients: dict[int, tuple[FindAssociation, Any]] = {}
    try:
        with ExitStack() as stack:
            given = args.million_databases or [None, None]
            for scale, url in zip((low, high), given, strict=True):
                work = root / f"scale-up-{scale}"
                work.mkdir(parents=True)
                if url is not None:
                    _check_filled(url, scale)
                    log(f"{target} scale-up: the index of {scale} instances at {url}")
                else:
                    name = f"pacs_qbench_{os.getpid()}_{scale}"
                    if args.keep:
                        url = _create_database(postgres, name)
                        log(f"  kept afterwards (--keep): {url}")
                    else:
                        url = stack.enter_context(fresh_database(postgres, name))
                    studies = population(scale // INSTANCES_PER_STUDY)
                    log(f"{target} scale-up: filling a fresh index with {scale} instances "
                        f"({args.fill})")
                    seconds = fill_pacs(url, work / "data", studies, args.fill)
                    res.fills[(f"{target} (scale-up)", scale)] = Fill(
                        target, scale, seconds, FILL_HOW[args.fill])
                    log(f"  filled in {seconds:.1f} s ({scale / seconds:.0f} inst/s)")
                # the peer is only registered: nothing is retrieved in this phase
                server = PacsServer(command, work, work / "data", url, free_port())
                servers[scale] = server
                stack.callback(server.stop)
                server.start()
            cases = {scale: probes(population(scale // INSTANCES_PER_STUDY)) for scale in servers}
            for scale, server in servers.items():
                clients[scale] = (FindAssociation(server.port, server.aet),
                                  stack.enter_context(qido_client(server.http_port)))
                stack.callback(clients[scale][0].close)
                dimse = dimse_cases(cases[scale])
                for case, plist in cases[scale].items():  # warm-up, unmeasured
                    up.matches[(scale, case)] = plist[0].expected
                    for i in range(3):
                        if case in dimse:
                            clients[scale][0].find(plist[i % len(plist)])
                        run_qido(clients[scale][1], plist[i % len(plist)])
            _scale_up_rounds(up, args, servers, clients, cases)
    except Exception as exc:
        res.failures.append(f"{target} scale-up: {type(exc).__name__}: {exc}")
        log(f"{target} scale-up FAILED: {type(exc).__name__}: {exc}")
        for server in servers.values():
            tail = server.log_tail()
            if tail:
                log("  last lines of the pacs log:\n" + _indent(tail))
    for (scale, case), result in up.results.items():
        if result.error:
            res.failures.append(f"{target} scale-up @ {scale}, {case}: {result.error}")


def _create_database(base_url: str, name: str) -> str:
    """A new database that outlives the run (``--keep``; drop it by hand)."""
    import psycopg

    with psycopg.connect(_admin_conninfo(base_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url.rstrip('/')}/{name}"


def _check_filled(url: str, scale: int) -> None:
    """A database given with --million-databases holds the population of ``scale``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.execute(text(
                "SELECT count(*) FROM instance WHERE source_ae = :ae"), {"ae": FILL_SOURCE_AE}
            ).scalar_one()
    finally:
        engine.dispose()
    if count != scale:
        raise RuntimeError(f"{url} holds {count} population instances, not {scale}")


def _scale_up_rounds(
    up: ScaleUp, args: argparse.Namespace, servers: dict[int, PacsServer],
    clients: dict[int, tuple[FindAssociation, Any]], cases: dict[int, dict[str, list[Probe]]],
) -> None:
    rounds = args.million_rounds
    env = {**os.environ, "TCP_NODELAY": "1"}
    for r in range(rounds):
        order = [up.low, up.high] if r % 2 == 0 else [up.high, up.low]
        log(f"  scale-up round {r + 1}/{rounds}: {' then '.join(f'{s:,}' for s in order)}")
        for case in CASES:
            n = max(1, (args.all_reps if case.key == "all" else args.reps) // rounds)
            medians: dict[tuple[int, str], float] = {}
            for scale in order:
                result = up.results.setdefault((scale, case.key), CaseResult())
                plist = cases[scale][case.key]
                find, qido = clients[scale]
                times: dict[str, list[float]] = {"find": [], "qido": []}
                try:
                    for i in range(n):
                        probe = plist[(r * n + i) % len(plist)]
                        if case.dimse:
                            ms, got = find.find(probe)
                            result.error = result.error or _check_count(case.key, probe, got)
                            times["find"].append(ms)
                        ms, got = run_qido(qido, probe)
                        result.error = result.error or _check_count(f"QIDO {case.key}", probe,
                                                                    got)
                        times["qido"].append(ms)
                    if args.findscu_reps > 0 and case.dimse:
                        probe = plist[r % len(plist)]
                        start = time.perf_counter()
                        done = subprocess.run(
                            findscu_argv(servers[scale].port, servers[scale].aet, probe),
                            capture_output=True, env=env, timeout=300, check=False)
                        if done.returncode != 0:
                            raise RuntimeError(f"findscu exit {done.returncode}")
                        result.findscu_ms.append((time.perf_counter() - start) * 1000)
                except Exception as exc:
                    result.error = result.error or f"{type(exc).__name__}: {exc}"
                result.times_ms += times["find"]
                result.qido_ms += times["qido"]
                for client, values in times.items():
                    if values:
                        medians[(scale, client)] = statistics.median(values)
            for client in ("find", "qido"):
                lo, hi = medians.get((up.low, client)), medians.get((up.high, client))
                if lo and hi:
                    up.round_ratios.setdefault((case.key, client), []).append(hi / lo)
        up.rounds = r + 1


def _log_retrieve(target: str, ret: RetrieveResult) -> None:
    def fmt(seconds: list[float]) -> str:
        rate = ret.rate(seconds)
        return "n/a" if rate is None else f"{rate:.0f}/s"

    log(f"    C-MOVE {fmt(ret.move_s)}, bare send {fmt(ret.bare_s)}, C-GET {fmt(ret.get_s)}"
        + (f" ERROR {ret.error}" if ret.error else ""))


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines())


@contextmanager
def _database(backend: str, postgres: str, data_dir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{(data_dir / 'index.sqlite').resolve()}"
        return
    with fresh_database(postgres, f"pacs_qbench_{os.getpid()}") as url:
        yield url


def run_orthanc(
    res: Results, binary: str, scales: Sequence[int], args: argparse.Namespace, root: Path,
    corpus: Corpus | None,
) -> None:
    target = "orthanc"
    work = root / target
    work.mkdir(parents=True)
    dest = Storescp(work / "dest")
    orthanc = BenchOrthanc(binary, work / "server", calling_aet=CALLING_AET, env=server_env())
    try:
        dest.start()
        orthanc.dest_port = dest.port
        filled = 0
        for scale in scales:
            studies = population(scale // INSTANCES_PER_STUDY)
            log(f"orthanc: filling to {scale} instances (POST /instances, 4 threads, "
                f"+{(len(studies) - filled) * 10} instances)")
            if orthanc.proc is None:
                orthanc.start()
            seconds = fill_orthanc(orthanc.http_port, studies[filled:])
            count = orthanc.instance_count()
            if count != len(studies) * INSTANCES_PER_STUDY:
                raise RuntimeError(f"Orthanc holds {count} instances after the fill")
            res.fills[(target, scale)] = Fill(
                target, (len(studies) - filled) * INSTANCES_PER_STUDY, seconds,
                "REST POST /instances (8x8 pixels), 4 threads",
            )
            log(f"  filled in {seconds:.1f} s ({res.fills[(target, scale)].rate:.0f} inst/s)")
            filled = len(studies)
            orthanc.stop()  # a fresh process for the measurement, like pacs
            orthanc.start()
            _find_phase(res, target, scale, orthanc.dicom_port, orthanc.aet, studies, args,
                        orthanc=True)
            if corpus is not None and scale == scales[-1] and args.retrieve_reps > 0:
                log(f"  {target} @ {scale}: storing the 300-instance study (storescu)")
                store_move_study(corpus, orthanc.dicom_port, orthanc.aet, work)
                ret = measure_retrieve(orthanc.dicom_port, orthanc.aet, corpus, dest,
                                       args.retrieve_reps, work)
                _log_retrieve(target, ret)
                res.retrieves[target] = ret
                if ret.error:
                    res.failures.append(f"{target} retrieve: {ret.error}")
    except Exception as exc:
        res.failures.append(f"{target}: {type(exc).__name__}: {exc}")
        log(f"{target} FAILED: {type(exc).__name__}: {exc}\n" + _indent(orthanc.log_tail()))
    finally:
        orthanc.stop()
        dest.stop()


# ---------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def render(res: Results, targets: Sequence[str], scales: Sequence[int],
           meta: dict[str, str]) -> str:
    out = [f"# Query/retrieve benchmark {meta['when']}", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k != "when"]
    header = "| target | instances | " + " | ".join(c.title for c in DIMSE_CASES) + " |"
    rule = "|---|---:|" + "---:|" * len(DIMSE_CASES)
    rows = [(t, s) for t in targets for s in scales if (t, s, CASES[0].key) in res.finds]

    out += ["", "## C-FIND, pynetdicom SCU, one open association: median / p90 ms (matches)", "",
            header, rule] if rows else []
    for t, s in rows:
        cells = []
        for c in DIMSE_CASES:
            r = res.finds[(t, s, c.key)]
            text = f"{_fmt(r.median)} / {_fmt(r.p90)} ({res.matches[(t, s, c.key)]})"
            cells.append(text + (" ERR" if r.error else ""))
        out.append(f"| {t} | {s:,} | " + " | ".join(cells) + " |")

    out += ["", "## C-FIND, findscu per query (TCP_NODELAY=1; process start and association "
            "included): median ms", "", header, rule] if rows else []
    for t, s in rows:
        cells = [_fmt(res.finds[(t, s, c.key)].findscu_median) for c in DIMSE_CASES]
        out.append(f"| {t} | {s:,} | " + " | ".join(cells) + " |")

    qido_rows = [(t, s) for t, s in rows if res.finds[(t, s, CASES[0].key)].qido_ms]
    if qido_rows:
        out += ["", "## QIDO-RS, the same queries, httpx on one keep-alive connection: median / "
                "p90 ms", "", "| target | instances | " + " | ".join(c.title for c in CASES)
                + " |", "|---|---:|" + "---:|" * len(CASES)]
        for t, s in qido_rows:
            cells = [f"{_fmt(r.qido_median)} / {_fmt(r.qido_p90)}"
                     for r in (res.finds.get((t, s, c.key), CaseResult()) for c in CASES)]
            out.append(f"| {t} | {s:,} | " + " | ".join(cells) + " |")

    if res.scale_up is not None and res.scale_up.results:
        out += _scale_up_report(res.scale_up)

    if len(scales) > 1:
        lo, hi = scales[0], scales[-1]
        out += ["", f"## Scaling: median at {hi:,} / median at {lo:,} (pynetdicom; target ≤ "
                f"{GOAL_SCALE_RATIO:g})", "", "| target | "
                + " | ".join(c.title for c in DIMSE_CASES) + " |",
                "|---|" + "---:|" * len(DIMSE_CASES)]
        for t in targets:
            ratios = [_scale_ratio(res, t, c.key, lo, hi) for c in DIMSE_CASES]
            if any(r is not None for r in ratios):
                out.append(f"| {t} | " + " | ".join(_fmt(r, 2) for r in ratios) + " |")

    pacs_targets = [t for t in targets if t.startswith("pacs-")]
    if "orthanc" in targets:
        out += ["", "## pacs / Orthanc: ratio of median C-FIND times (≤ 1 means pacs is at "
                "least as fast)", "", "| target | client | instances | "
                + " | ".join(c.title for c in DIMSE_CASES) + " |",
                "|---|---|---:|" + "---:|" * len(DIMSE_CASES)]
        for t in pacs_targets:
            for client, findscu in (("pynetdicom", False), ("findscu", True)):
                for s in scales:
                    ratios = [_vs_orthanc(res, t, c.key, s, findscu) for c in DIMSE_CASES]
                    if any(r is not None for r in ratios):
                        out.append(f"| {t} / orthanc | {client} | {s:,} | "
                                   + " | ".join(_fmt(r, 2) for r in ratios) + " |")

    if res.retrieves:
        out += ["", "## Retrieve: the 300-instance CT study (512x512 16-bit), median "
                "instances/s", "",
                "| target | C-MOVE to storescp | bare pynetdicom chunked send | C-MOVE / bare | "
                "C-GET (getscu) |", "|---|---:|---:|---:|---:|"]
        for t in targets:
            ret = res.retrieves.get(t)
            if ret is None:
                continue
            move, bare, get = ret.rate(ret.move_s), ret.rate(ret.bare_s), ret.rate(ret.get_s)
            ratio = move / bare if move and bare else None
            mb = ret.nbytes / ret.instances / 1e6 if ret.instances else 0
            out.append(f"| {t} | {_fmt(move, 0)} ({_fmt(move and move * mb, 0)} MB/s) | "
                       f"{_fmt(bare, 0)} | {_fmt(ratio, 2)} | {_fmt(get, 0)} |"
                       + (f" ERROR {ret.error}" if ret.error else ""))

    out += _goals(res, pacs_targets, scales, "orthanc" in targets)
    if res.scale_up is not None and res.scale_up.results:
        up = res.scale_up
        ratios = {k: v for k, v in scale_up_ratios(up).items() if v is not None}
        if ratios:
            (case, client), worst = max(ratios.items(), key=lambda kv: kv[1])
            title = next(c.title for c in CASES if c.key == case)
            out.append(f"| pacs-postgres: every C-FIND and QIDO-RS median at {up.high:,} vs "
                       f"{up.low:,} (interleaved) | ≤ {GOAL_MILLION_RATIO:g}x | worst "
                       f"{worst:.2f} ({title}, {'C-FIND' if client == 'find' else 'QIDO-RS'}) "
                       f"| {_verdict(worst <= GOAL_MILLION_RATIO)} |")

    out += ["", "## Fill", "", "| target | to instances | added | seconds | instances/s | how |",
            "|---|---:|---:|---:|---:|---|"] if res.fills else []
    for (t, s), f in res.fills.items():
        out.append(f"| {t} | {s:,} | {f.instances:,} | {f.seconds:.1f} | {f.rate:.0f} | "
                   f"{f.method} |")
    if res.failures:
        out += ["", "## Failed runs", ""] + [f"- {f}" for f in res.failures]
    return "\n".join(out) + "\n"


def _scale_up_report(up: ScaleUp) -> list[str]:
    lo, hi = up.low, up.high
    out = ["", f"## PostgreSQL, {hi:,} against {lo:,} instances: two indexes side by side, "
           f"interleaved ({up.rounds} rounds; target: C-FIND and QIDO-RS medians at most "
           f"{GOAL_MILLION_RATIO:g}x)", "",
           "Medians over all rounds; the ratio is median at "
           f"{hi:,} / median at {lo:,}, in brackets the range of the per-round ratios.", "",
           f"| query (matches) | client | {lo:,} ms | {hi:,} ms | ratio | verdict |",
           "|---|---|---:|---:|---:|---|"]
    for case in CASES:
        a, b = up.results.get((lo, case.key)), up.results.get((hi, case.key))
        if a is None or b is None:
            continue
        matches = f"{up.matches.get((lo, case.key), '?')}/{up.matches.get((hi, case.key), '?')}"
        for client, title, pick in (
            ("find", "C-FIND pynetdicom", lambda r: r.median),
            ("qido", "QIDO-RS httpx", lambda r: r.qido_median),
            ("findscu", "C-FIND findscu", lambda r: r.findscu_median),
        ):
            if client != "qido" and not case.dimse:
                continue
            m_lo, m_hi = pick(a), pick(b)
            ratio = m_hi / m_lo if m_lo and m_hi else None
            spread = up.round_ratios.get((case.key, client), [])
            span = f" ({min(spread):.2f}-{max(spread):.2f})" if spread else ""
            verdict = "informative" if client == "findscu" else _verdict(
                None if ratio is None else ratio <= GOAL_MILLION_RATIO)
            out.append(f"| {case.title} ({matches}) | {title} | {_fmt(m_lo)} | {_fmt(m_hi)} | "
                       f"{_fmt(ratio, 2)}{span} | {verdict} |")
    return out


def scale_up_ratios(up: ScaleUp) -> dict[tuple[str, str], float | None]:
    """(case, client) -> median at high / median at low, for C-FIND and QIDO-RS."""
    out: dict[tuple[str, str], float | None] = {}
    for case in CASES:
        a, b = up.results.get((up.low, case.key)), up.results.get((up.high, case.key))
        for client in ("find", "qido"):
            if a is None or b is None:
                out[(case.key, client)] = None
                continue
            m_lo, m_hi = (a.median, b.median) if client == "find" else (a.qido_median,
                                                                        b.qido_median)
            out[(case.key, client)] = m_hi / m_lo if m_lo and m_hi else None
    return out


def _median(res: Results, t: str, s: int, case: str, findscu: bool = False) -> float | None:
    r = res.finds.get((t, s, case))
    if r is None:
        return None
    return r.findscu_median if findscu else r.median


def _scale_ratio(res: Results, t: str, case: str, lo: int, hi: int) -> float | None:
    a, b = _median(res, t, hi, case), _median(res, t, lo, case)
    return a / b if a is not None and b else None


def _vs_orthanc(
    res: Results, t: str, case: str, s: int, findscu: bool = False
) -> float | None:
    a, b = _median(res, t, s, case, findscu), _median(res, "orthanc", s, case, findscu)
    return a / b if a is not None and b else None


def _goals(
    res: Results, pacs_targets: Sequence[str], scales: Sequence[int], orthanc: bool
) -> list[str]:
    out = ["", "## The issue's targets (pynetdicom SCU, open association)", "",
           "| target | goal | measured | verdict |", "|---|---|---|---|"]
    for t in pacs_targets:
        for s in scales:
            for c in DIMSE_CASES:
                if c.goal_ms is None:
                    continue
                m = _median(res, t, s, c.key)
                out.append(f"| {t} @ {s:,}: {c.title} median | < {c.goal_ms:g} ms | "
                           f"{_fmt(m)} ms | {_verdict(None if m is None else m < c.goal_ms)} |")
        if len(scales) > 1:
            lo, hi = scales[0], scales[-1]
            ratios = {c.title: _scale_ratio(res, t, c.key, lo, hi) for c in DIMSE_CASES}
            known = {k: v for k, v in ratios.items() if v is not None}
            worst = max(known.items(), key=lambda kv: kv[1]) if known else None
            measured = f"worst {worst[1]:.2f} ({worst[0]})" if worst else "n/a"
            out.append(f"| {t}: every query at {hi:,} vs {lo:,} | ≤ {GOAL_SCALE_RATIO:g}x | "
                       f"{measured} | {_verdict(None if worst is None else worst[1] <= 2)} |")
        if orthanc:
            for s in scales:
                ratios = {c.title: _vs_orthanc(res, t, c.key, s) for c in DIMSE_CASES}
                known = {k: v for k, v in ratios.items() if v is not None}
                if not known:
                    continue
                worst = max(known.items(), key=lambda kv: kv[1])
                out.append(f"| {t} @ {s:,}: every C-FIND vs Orthanc (time ratio) | ≤ 1 | "
                           f"worst {worst[1]:.2f} ({worst[0]}) | {_verdict(worst[1] <= 1)} |")
        ret = res.retrieves.get(t)
        if ret is not None:
            move, bare = ret.rate(ret.move_s), ret.rate(ret.bare_s)
            ratio = move / bare if move and bare else None
            out.append(f"| {t}: C-MOVE / bare chunked send | ≥ {GOAL_MOVE_VS_BARE:g} | "
                       f"{_fmt(ratio, 2)} | "
                       f"{_verdict(None if ratio is None else ratio >= GOAL_MOVE_VS_BARE)} |")
    return out


# ------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.query", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--scales", default="10000,100000",
                    help="instances in the index, ascending, comma list (default 10000,100000); "
                    "empty with --million: only the 100k-against-1M comparison")
    ap.add_argument("--targets", default=",".join(BACKENDS),
                    help="pacs index backends: sqlite,postgres (default both)")
    ap.add_argument("--reps", type=int, default=50, help="pynetdicom C-FIND reps per query")
    ap.add_argument("--all-reps", type=int, default=20,
                    help="reps of the universal (1,000 answers) query (default 20)")
    ap.add_argument("--findscu-reps", type=int, default=10,
                    help="findscu runs per query (0 skips findscu)")
    ap.add_argument("--retrieve-reps", type=int, default=3,
                    help="C-MOVE / bare send / C-GET runs (0 skips retrieve)")
    ap.add_argument("--qido-reps", type=int, default=50,
                    help="QIDO-RS requests per query on pacs (the universal one: --all-reps; "
                    "0 skips QIDO-RS)")
    ap.add_argument("--fill", choices=FILL_METHODS, default="bulk",
                    help="how pacs's index is filled: bulk (bench.bulk_load, default) or upsert "
                    "(Repository.upsert_instance, ~650 instances/s on PostgreSQL)")
    ap.add_argument("--million", action=argparse.BooleanOptionalAction, default=False,
                    help="also PostgreSQL indexes of 100,000 and 1,000,000 instances side by "
                    "side, queries interleaved, 1M/100k ratios (--million-scales); make bench "
                    "passes --million, --no-million after it skips this")
    ap.add_argument("--million-scales", default="100000,1000000",
                    help="LOW,HIGH instances of --million (default 100000,1000000)")
    ap.add_argument("--million-databases", default=None, metavar="URL_LOW,URL_HIGH",
                    help="PostgreSQL databases already filled with the LOW and HIGH populations "
                    "(as an earlier run with --keep leaves them): used as they are, not dropped")
    ap.add_argument("--million-rounds", type=int, default=10,
                    help="interleaved rounds of --million; --reps, --all-reps are spread over "
                    "them, findscu runs once per round and query (default 10)")
    ap.add_argument("--orthanc", action="store_true",
                    help="also Orthanc on the same data (filling it takes minutes)")
    ap.add_argument("--orthanc-scales", default=None,
                    help="scales for Orthanc (default: --scales), e.g. 10000")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where servers keep their data (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep server data and logs")
    args = ap.parse_args(argv)
    try:
        args.scales = sorted({int(s) for s in args.scales.split(",") if s.strip()})
        args.orthanc_scales = (
            sorted({int(s) for s in args.orthanc_scales.split(",") if s.strip()})
            if args.orthanc_scales else list(args.scales)
        )
        args.million_scales = sorted({int(s) for s in args.million_scales.split(",")
                                      if s.strip()})
    except ValueError:
        ap.error("--scales, --orthanc-scales and --million-scales take comma lists of integers")
    if len(args.million_scales) != 2 or args.million_scales[0] < 10 * SAMPLES:
        ap.error(f"--million-scales takes two scales, each at least {10 * SAMPLES}")
    if args.million_rounds < 1:
        ap.error("--million-rounds must be >= 1")
    if (not args.scales and not args.million) or any(s < 10 * SAMPLES for s in args.scales):
        ap.error(f"each scale must be at least {10 * SAMPLES} instances")
    if args.million_databases is not None:
        args.million_databases = [u.strip() for u in args.million_databases.split(",")]
        if len(args.million_databases) != 2:
            ap.error("--million-databases takes two URLs, LOW and HIGH")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for tool in ("findscu", "getscu", "storescu", "storescp"):
        if shutil.which(tool) is None:
            log(f"{tool} not found: install DCMTK (apt-get install dcmtk)")
            return 2
    postgres = os.environ.get("PACS_BENCH_POSTGRES", DEFAULT_POSTGRES)
    command = pacs_command()
    backends = list(args.targets)
    problem = pacs_problem(command)
    if problem:
        log(f"pacs: cannot run ({problem})")
        backends = []
    if "postgres" in backends:
        problem = postgres_problem(postgres)
        if problem:
            log(f"pacs-postgres: skipped: {problem}")
            backends.remove("postgres")
    orthanc_binary = None
    if args.orthanc:
        orthanc_binary = ensure_orthanc(log)
        if orthanc_binary is None:
            log("orthanc: not installed and could not be installed: skipped")
        elif processes_named("Orthanc"):
            log("orthanc: note: another Orthanc is running (not ours); left alone")
    if not backends and orthanc_binary is None:
        log("nothing can run")
        return 2

    corpus = ensure_move_corpus() if args.retrieve_reps > 0 and args.scales else None
    if corpus is not None:
        for name in corpus.files:  # warm the page cache: no target pays for cold reads
            (corpus.root / name).read_bytes()
    res = Results()
    root = Path(tempfile.mkdtemp(prefix="pacs-qbench-", dir=args.work_dir))
    targets = [f"pacs-{b}" for b in backends] + (["orthanc"] if orthanc_binary else [])
    try:
        for backend in backends if args.scales else []:
            run_pacs(res, backend, args.scales, args, root, command, postgres, corpus)
        if args.million:
            if "postgres" in backends:
                run_scale_up(res, args, root, command, postgres)
            else:
                log("--million: PostgreSQL is not among the targets that can run: skipped")
        if orthanc_binary:
            run_orthanc(res, orthanc_binary, args.orthanc_scales, args, root, corpus)
    finally:
        if args.keep:
            log(f"kept server data and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    meta = environment(args, orthanc_binary, corpus)
    scales = sorted(set(args.scales) | (set(args.orthanc_scales) if orthanc_binary else set()))
    report = render(res, targets, scales, meta)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"query-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(report, encoding="utf-8")
    log("")
    log(report)
    log(f"written to {path.relative_to(REPO)}")
    return 1 if res.failures else 0


def environment(
    args: argparse.Namespace, orthanc_binary: str | None, corpus: Corpus | None
) -> dict[str, str]:
    meta = {"when": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
    meta["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    meta["DCMTK"] = _first_line(["findscu", "--version"])
    if orthanc_binary:
        meta["Orthanc"] = _first_line([orthanc_binary, "--version"])
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "-uno"])
    meta["pacs commit"] = commit + (" (with uncommitted changes)" if dirty != "unknown" else "")
    meta["population"] = (
        "10 instances a study (CT 3 series, MR 4, CR 2; 50/30/20 %), 1-3 studies a patient, "
        f"{STUDIES_PER_YEAR} studies a year from 2015; synthetic surnames, plus "
        f"SMITH/Smith/SMITHSON/Smithers/SMIRNOV patients among the first {SMITH_WINDOW} "
        "studies only (so smi* and the month give the same matches at every scale)"
    )
    how = (
        "bench.bulk_load: the rows Repository.upsert_instance writes (its own row builders), "
        "written with COPY (PostgreSQL) / executemany (SQLite), 20,000 instances per "
        "transaction" if args.fill == "bulk" else
        "Repository.upsert_instance (the ingest service's index call), 1,000 per write "
        "transaction"
    )
    meta["fill (pacs)"] = (
        "no DIMSE: header-only pydicom Dataset -> storage.attributes.extract -> " + how
        + "; studies ARCHIVED as ingest makes them, marked stable; blobs not written; "
        "PostgreSQL: VACUUM ANALYZE after each fill (what autovacuum would do)"
    )
    if orthanc_binary:
        meta["fill (Orthanc)"] = (
            "the same headers + 8x8 16-bit pixels as DICOM files, REST POST /instances, 4 "
            "threads; Orthanc config: no plugins, SQLite, LimitFindResults 1000"
        )
    meta["C-FIND SCU"] = (
        f"pynetdicom {_version('pynetdicom')}, one association for all queries, TCP_NODELAY "
        f"and reactor delay {REACTOR_DELAY_S * 1000:g} ms on its socket; {args.reps} reps per "
        f"query ({args.all_reps} for the universal one) after 3 warm-up, rotating over "
        f"{SAMPLES} patients/studies for the exact-key queries; findscu {args.findscu_reps} "
        "runs per query with TCP_NODELAY=1"
    )
    if args.qido_reps > 0:
        meta["QIDO-RS"] = (
            f"httpx {_version('httpx')}, one keep-alive connection, TCP_NODELAY, the same "
            "queries as /studies?<keys> and /studies/{uid}/series (default return keys), "
            f"{args.qido_reps} reps per query ({args.all_reps} for the universal one) after 3 "
            "warm-up; time to the last byte of the body"
        )
    if args.million:
        low, high = args.million_scales
        filled = ("the databases given (--million-databases), filled before"
                  if args.million_databases else "each filled on its own")
        meta["scale-up (--million)"] = (
            f"two PostgreSQL indexes of {low:,} and {high:,} instances, {filled}; "
            "two pacs serve running at once; "
            f"{args.million_rounds} rounds, in each every query on both servers, the order "
            "turned each round: C-FIND (one open association per server) and QIDO-RS "
            "alternating, then one findscu"
        )
    meta["STUDY return keys"] = ", ".join(STUDY_RETURN_KEYS)
    if corpus is not None:
        meta["retrieve study"] = (
            f"{len(corpus.files)} CT 512x512 instances, {corpus.nbytes / 1e6:.0f} MB; "
            f"{args.retrieve_reps} runs each of C-MOVE (pynetdicom SCU -> server -> storescp "
            "-aet DEST), bare pynetdicom chunked send of the files to the same storescp, C-GET "
            "with getscu -od (TCP_NODELAY=1); medians"
        )
    return meta


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
