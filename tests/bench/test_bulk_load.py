"""bench.bulk_load writes the index ``Repository.upsert_instance`` writes.

The query benchmark fills 1,000,000-instance indexes in bulk; its figures only mean something
if such an index is the one ingest would have made. Three checks, on SQLite and on PostgreSQL
(PACS_TEST_DATABASE_URL): the bench's population rows are what ``extract`` makes of each
instance; bulk-loaded tables hold the rows upsert-filled ones hold (ids and times aside); and
``pacs serve`` on either index answers the bench's C-FIND and QIDO-RS queries identically.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from bench.bulk_load import bulk_load
from bench.query import (
    FIND_MODEL,
    PENDING,
    Probe,
    _scu_ae,
    dimse_cases,
    fill_pacs,
    identifier,
    instance_datasets,
    population,
    population_rows,
    probes,
    qido_request,
)
from pacs.services.workflow import VISIBLE_TO_VIEWERS, StudyState
from storage.attributes import extract, request_attributes
from storage.blobs import BlobInfo
from storage.index import Index, InstanceRow
from storage.index.models import instance, patient, request_attribute, series, study
from tests.conftest import fresh_postgres_database
from tests.factories.datasets import ct_instance, mr_instance
from tests.support.server import PacsServer

TIMES = frozenset({"created_at", "state_changed_at", "stable_at", "received_at"})


def test_population_rows_are_what_extract_makes_of_each_instance() -> None:
    studies = population(60)
    pairs = zip(instance_datasets(studies), population_rows(studies), strict=True)
    for n, (ds, row) in enumerate(pairs):
        assert row.values == extract(ds), f"instance {n}"
        assert row.request_attributes == request_attributes(ds)
        assert row.values  # (not vacuous)
    assert n + 1 == 600


# ------------------------------------------------------------------------- rows, table by table


def _item(requested_procedure: str, step: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = requested_procedure
    item.ScheduledProcedureStepID = step
    return item


def _instance_rows() -> list[InstanceRow]:
    """Two patients (one without PatientID), three studies, request attributes, accents."""
    datasets = []
    for n in range(3):
        datasets.append(ct_instance(
            PatientID="PAT-1", PatientName="Müller^Jörg", StudyID="1", SeriesNumber=1,
            InstanceNumber=n + 1, SpecificCharacterSet="ISO_IR 192",
            RequestAttributesSequence=[_item("RP1", "SPS1"), _item("RP2", "SPS2")],
        ))
    for n in range(2):
        datasets.append(mr_instance(PatientID="PAT-1", PatientName="Müller^Jörg", StudyID="1",
                                    SeriesNumber=2, InstanceNumber=n + 1,
                                    SpecificCharacterSet="ISO_IR 192",
                                    StudyInstanceUID=datasets[0].StudyInstanceUID))
    for n in range(2):
        datasets.append(mr_instance(PatientID=None, PatientName="ANON^A", StudyID="7",
                                    InstanceNumber=n + 1, StudyDate="20230505"))
    datasets.append(ct_instance(PatientID="PAT-1", PatientName="MULLER^J", StudyID="2",
                                StudyDate="20240301", AccessionNumber="ACC-2"))
    return [_row(ds) for ds in datasets]


def _row(ds: Dataset) -> InstanceRow:
    key = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()
    return InstanceRow(
        values=extract(ds), request_attributes=request_attributes(ds),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        blob=BlobInfo(key=key, size=100, sha256=key), source_ae="TESTSCU",
    )


def _upsert(index: Index, rows: Sequence[InstanceRow]) -> None:
    with index.unit_of_work(write=True) as repo:
        for row in rows:
            repo.upsert_instance(row, initial_state=StudyState.ARCHIVED, overwrite=False,
                                 visible_states=VISIBLE_TO_VIEWERS)


def _tables(index: Index) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the instance tables, ids replaced by the natural keys they stand for,
    times by whether they are set; sorted."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with index.engine.connect() as conn:
        patients = {r.id: (r.patient_id, r.issuer_of_patient_id)
                    for r in conn.execute(select(patient))}
        studies = {r.id: r.study_instance_uid for r in conn.execute(select(study))}
        series_uids = {r.id: r.series_instance_uid for r in conn.execute(select(series))}
        parents = {"patient_fk": patients, "study_fk": studies, "series_fk": series_uids}
        for table in (patient, study, series, request_attribute, instance):
            rows = []
            for r in conn.execute(select(table)):
                cells = []
                for column in table.columns:
                    value = r._mapping[column.name]
                    if column.name == "id":
                        continue
                    if column.name in parents:
                        value = parents[column.name][value]
                    elif column.name in TIMES:
                        value = value is not None
                    cells.append((column.name, value))
                rows.append(tuple(cells))
            out[table.name] = sorted(rows, key=repr)
    return out


@pytest.fixture
def other_database_url(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A second empty database on the backend of ``database_url``."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.sqlite'}"
        return
    with fresh_postgres_database(str(request.getfixturevalue("postgres_admin"))) as url:
        yield url


def test_bulk_load_writes_the_rows_upsert_instance_writes(
    database_url: str, other_database_url: str
) -> None:
    rows = _instance_rows()
    first, rest = rows[-1:], rows[:-1]  # PAT-1 is in the index already (its 2nd study)
    ingested = Index(database_url)
    loaded = Index(other_database_url)
    try:
        for built in (ingested, loaded):
            built.upgrade()
            _upsert(built, first)
        _upsert(ingested, rest)
        result = bulk_load(loaded, rest, chunk=2)  # chunks that cut series in two
        assert (result.instances, result.studies) == (len(rest), 2)

        expected = _tables(ingested)
        assert len(expected["request_attribute"]) == 2 and len(expected["patient"]) == 2
        assert _tables(loaded) == expected

        # the ids bulk_load wrote are behind the database's own numbering: ingest goes on
        after = _row(ct_instance(PatientID="PAT-3", StudyID="9", StudyDate="20240909"))
        _upsert(loaded, [after])
        _upsert(ingested, [after])
        assert _tables(loaded) == _tables(ingested)
    finally:
        ingested.dispose()
        loaded.dispose()


def test_bulk_load_refuses_a_study_already_in_the_index(database_url: str) -> None:
    index = Index(database_url)
    try:
        index.upgrade()
        rows = _instance_rows()
        _upsert(index, rows[:1])
        with pytest.raises(Exception, match="(?i)unique|duplicate"):
            bulk_load(index, rows[1:2])
    finally:
        index.dispose()


# ------------------------------------------------------------------- the answers of pacs serve


def _find(server: PacsServer, plist: Sequence[Probe]) -> list[list[dict[str, Any]]]:
    """Every C-FIND response of each probe, keyword -> value as text."""
    ae = _scu_ae([FIND_MODEL])
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    assert assoc.is_established
    answers = []
    try:
        for probe in plist:
            matches = []
            for status, ds in assoc.send_c_find(identifier(probe), FIND_MODEL):
                assert status is not None and status.Status in (*PENDING, 0)
                if status.Status in PENDING:
                    matches.append({e.keyword: str(e.value) for e in ds})
            answers.append(matches)
    finally:
        assoc.release()
        ae.shutdown()
    return answers


def _qido(server: PacsServer, plist: Sequence[Probe]) -> list[Any]:
    with httpx.Client(base_url=f"{server.base_url}/dicom-web", timeout=60) as client:
        answers = []
        for probe in plist:
            path, params = qido_request(probe)
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    return answers


def _strip_urls(answers: list[Any]) -> list[Any]:
    """RetrieveURL names the server's own port."""
    return [[{k: v for k, v in item.items() if k != "00081190"} for item in answer]
            for answer in answers]


def test_a_bulk_loaded_index_answers_c_find_and_qido_as_an_ingested_one(
    database_url: str, other_database_url: str, tmp_path: Path
) -> None:
    studies = population(120)
    # filled in two steps, as the bench grows an index; a patient straddles the step
    cut = next(k for k in range(40, 120) if studies[k - 1].patient == studies[k].patient)
    bulk_url = other_database_url
    for url, folder, method in ((database_url, "upsert", "upsert"), (bulk_url, "bulk", "bulk")):
        fill_pacs(url, tmp_path / folder, studies[:cut], method)
        fill_pacs(url, tmp_path / folder, studies[cut:], method)
    cases = probes(studies)
    cases["smi-series"] = [Probe("SERIES", {"StudyInstanceUID": st.uid, "Modality": "",
                                            "NumberOfSeriesRelatedInstances": ""},
                                 len(st.series))
                           for st in studies if st.smith][:5]
    cases["page"] = [dataclasses.replace(cases["page"][0], page=(20, 50), expected=20)]
    flat = [probe for plist in dimse_cases(cases).values() for probe in plist]
    web = [probe for plist in cases.values() for probe in plist]
    answers = {}
    for folder, url in (("upsert", database_url), ("bulk", bulk_url)):
        server = PacsServer(data_dir=tmp_path / folder, database_url=url).start()
        try:
            answers[folder] = (_find(server, flat), _strip_urls(_qido(server, web)))
        finally:
            server.stop()
    for url in (database_url, bulk_url):
        index = Index(url)
        try:
            answers[url] = _tables(index)
        finally:
            index.dispose()
    assert answers[bulk_url] == answers[database_url]  # stable_at, state, every column
    finds, qidos = answers["upsert"]
    assert answers["bulk"][0] == finds
    assert answers["bulk"][1] == qidos
    # the answers are the population's (not both empty)
    assert [len(a) for a in finds] == [p.expected for p in flat]
    assert [len(a) for a in qidos] == [p.expected for p in web]
    assert all(a and "NumberOfStudyRelatedInstances" in a[0] for a in finds[: len(cases["pid"])])
