"""QIDO-RS against a running server filled by C-STORE (PS3.18 10.6), with httpx and
dicomweb-client: every level, keyword and tag forms, each matching kind, includefield,
paging, warnings for ignored parameters, 400 for malformed values, quarantine invisible."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.services.workflow import StudyState
from tests.dicomweb.conftest import WebArchive
from tests.factories.datasets import (
    ct_instance,
    make_uid,
    mr_instance,
    multiframe_instance,
    non_ascii_instance,
)
from tests.support.server import PacsServer

DOE_STUDY = make_uid("qido", "doe")
DOE_CT = make_uid("qido", "doe", "ct")
DOE_MR = make_uid("qido", "doe", "mr")
JANE_STUDY = make_uid("qido", "jane")
HIDDEN_STUDY = make_uid("qido", "hidden")
FRAMES_STUDY = make_uid("qido", "frames")
PAGE_STUDIES = [make_uid("qido", "page", n) for n in range(12)]

# The study-list fields OHIF reads.
OHIF_STUDY_TAGS = ("0020000D", "00080020", "00080030", "00080050", "00100020", "00100010",
                   "00100030", "00201208", "00081030", "00080061", "00080090")


def _population() -> list[Dataset]:
    doe = {"PatientID": "P-DOE-1", "PatientName": "Doe^John", "StudyDate": "20240115",
           "StudyTime": "101500", "StudyInstanceUID": DOE_STUDY, "AccessionNumber": "ACC-1",
           "StudyDescription": "Chest and head", "ReferringPhysicianName": "Ref^Doctor",
           "PatientBirthDate": "19700101", "InstitutionName": "General Hospital"}
    requested = Dataset()
    requested.RequestedProcedureID = "RP-77"
    requested.ScheduledProcedureStepID = "SPS-1"
    datasets = [
        ct_instance(InstanceNumber=n, SeriesNumber=1, SeriesInstanceUID=DOE_CT,
                    SeriesDescription="CT chest", RequestAttributesSequence=Sequence([requested]),
                    **doe)
        for n in (1, 2)
    ]
    datasets.append(mr_instance(InstanceNumber=1, SeriesNumber=2, SeriesInstanceUID=DOE_MR,
                                SeriesDescription="MR head", **doe))
    datasets.append(ct_instance(PatientID="P-DOE-2", PatientName="DOE^JANE",
                                StudyDate="20231220", StudyInstanceUID=JANE_STUDY))
    datasets.append(non_ascii_instance("ISO_IR 192", PatientID="P-MUE", StudyDate="20240201"))
    datasets.append(ct_instance(PatientID="50%_OFF", PatientName="Smith^Anna",
                                StudyDate="20240131"))
    datasets.append(ct_instance(PatientID="50XXOFF", PatientName="Smith^Bob",
                                StudyDate="20231231"))
    datasets.append(ct_instance(PatientID="P-QUAR", PatientName="Doe^Hidden",
                                StudyDate="20240110", StudyInstanceUID=HIDDEN_STUDY))
    datasets.append(multiframe_instance(3, PatientID="P-FRAMES", PatientName="Multi^Frame",
                                        StudyDate="20240301", StudyInstanceUID=FRAMES_STUDY))
    datasets += [
        ct_instance(PatientID=f"PAGE-{n:02d}", PatientName=f"Page^{n:02d}", StudyDate="20220101",
                    StudyInstanceUID=uid)
        for n, uid in enumerate(PAGE_STUDIES)
    ]
    return datasets


@pytest.fixture(scope="module")
def archive(web_archive: WebArchive) -> WebArchive:
    web_archive.store(_population())
    web_archive.set_state(HIDDEN_STUDY, StudyState.QUARANTINED)
    return web_archive


def _get(archive: WebArchive, path: str, **params: Any) -> httpx.Response:
    return archive.http.get(f"{archive.url}{path}", params=params)


def _json(archive: WebArchive, path: str, **params: Any) -> list[dict[str, Any]]:
    response = _get(archive, path, **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    body: list[dict[str, Any]] = response.json()
    return body


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    if not values:
        return None
    first = values[0]
    return first["Alphabetic"] if isinstance(first, dict) else first


def _values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return sorted(str(_value(item, tag)) for item in items)


# -- studies -------------------------------------------------------------------------------


def test_study_by_keyword_and_by_tag_carries_the_study_list_fields(archive: WebArchive) -> None:
    by_keyword = _json(archive, "/studies", PatientID="P-DOE-1")
    by_tag = _json(archive, "/studies", **{"00100020": "P-DOE-1"})
    assert by_keyword == by_tag
    assert len(by_keyword) == 1
    study = by_keyword[0]
    for tag in OHIF_STUDY_TAGS:
        assert tag in study, tag
    assert _value(study, "0020000D") == DOE_STUDY
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert study["00201208"] == {"vr": "IS", "Value": [3]}
    assert study["00201206"] == {"vr": "IS", "Value": [2]}
    assert _value(study, "00080020") == "20240115"
    assert _value(study, "00080050") == "ACC-1"
    assert _value(study, "00081030") == "Chest and head"
    assert _value(study, "00080090") == "Ref^Doctor"
    assert _value(study, "00100030") == "19700101"
    assert _value(study, "00080056") == "ONLINE"
    assert study["00081190"]["vr"] == "UR"
    assert _value(study, "00081190") == f"{archive.url}/studies/{DOE_STUDY}"


def test_wildcard_names_ignore_case_and_skip_quarantined(archive: WebArchive) -> None:
    found = _json(archive, "/studies", PatientName="doe*")
    assert _values(found, "00100010") == ["DOE^JANE", "Doe^John"]


def test_fuzzymatching_keeps_the_servers_case_insensitive_names(archive: WebArchive) -> None:
    for fuzzy in ("false", "true"):
        found = _json(archive, "/studies", PatientName="doe^john", fuzzymatching=fuzzy)
        assert _values(found, "0020000D") == [DOE_STUDY]


def test_wildcard_escapes_sql_pattern_characters(archive: WebArchive) -> None:
    found = _json(archive, "/studies", PatientID="50%*")
    assert _values(found, "00100020") == ["50%_OFF"]
    found = _json(archive, "/studies", PatientID="50?_OFF")
    assert _values(found, "00100020") == ["50%_OFF"]


def test_date_ranges_closed_and_open(archive: WebArchive) -> None:
    january = _json(archive, "/studies", StudyDate="20240101-20240131")
    assert _values(january, "00100020") == ["50%_OFF", "P-DOE-1"]  # P-QUAR is quarantined
    before = _json(archive, "/studies", StudyDate="-20231231")
    assert set(_values(before, "00100020")) == {
        "50XXOFF", "P-DOE-2", *(f"PAGE-{n:02d}" for n in range(12))}
    after = _json(archive, "/studies", StudyDate="20240201-")
    assert _values(after, "00100020") == ["P-FRAMES", "P-MUE"]


def test_uid_list_and_value_list_matching(archive: WebArchive) -> None:
    found = _json(archive, "/studies", StudyInstanceUID=f"{DOE_STUDY},{JANE_STUDY}")
    assert _values(found, "0020000D") == sorted([DOE_STUDY, JANE_STUDY])
    found = _json(archive, "/studies", StudyInstanceUID=f"{DOE_STUDY}\\{HIDDEN_STUDY}")
    assert _values(found, "0020000D") == [DOE_STUDY]
    mr = _json(archive, "/studies", ModalitiesInStudy="MR")
    assert _values(mr, "0020000D") == [DOE_STUDY]


def test_sequence_matching_on_request_attributes(archive: WebArchive) -> None:
    found = _json(archive, f"/studies/{DOE_STUDY}/series",
                  **{"RequestAttributesSequence.RequestedProcedureID": "RP-77"})
    assert _values(found, "0020000E") == [DOE_CT]
    by_tag = _json(archive, "/series", **{"00400275.00401001": "RP-77"})
    assert _values(by_tag, "0020000E") == [DOE_CT]


def test_non_ascii_names_come_back_as_utf8(archive: WebArchive) -> None:
    found = _json(archive, "/studies", PatientID="P-MUE")
    assert len(found) == 1
    assert _value(found[0], "00100010") == "MÜLLER^JÜRGEN"
    assert _value(found[0], "00080005") == "ISO_IR 192"
    assert _values(_json(archive, "/studies", PatientName="muller*"), "00100020") == ["P-MUE"]


def test_no_match_is_an_empty_array(archive: WebArchive) -> None:
    assert _json(archive, "/studies", PatientID="NOBODY") == []
    assert _json(archive, f"/studies/{HIDDEN_STUDY}/series") == []
    assert _json(archive, f"/studies/{HIDDEN_STUDY}/instances") == []


# -- series and instances ------------------------------------------------------------------


def test_series_of_a_study(archive: WebArchive) -> None:
    found = _json(archive, f"/studies/{DOE_STUDY}/series")
    by_uid = {_value(item, "0020000E"): item for item in found}
    assert set(by_uid) == {DOE_CT, DOE_MR}
    ct = by_uid[DOE_CT]
    assert _value(ct, "00080060") == "CT"
    assert ct["00201209"] == {"vr": "IS", "Value": [2]}
    assert ct["00200011"] == {"vr": "IS", "Value": [1]}
    assert _value(ct, "0008103E") == "CT chest"
    assert _value(ct, "00081190") == f"{archive.url}/studies/{DOE_STUDY}/series/{DOE_CT}"
    mr_only = _json(archive, f"/studies/{DOE_STUDY}/series", Modality="MR")
    assert _values(mr_only, "0020000E") == [DOE_MR]


def test_series_in_every_study_carry_study_attributes(archive: WebArchive) -> None:
    found = _json(archive, "/series", Modality="MR")
    assert _values(found, "0020000E") == [DOE_MR]
    assert _value(found[0], "00100010") == "Doe^John"
    assert _value(found[0], "00080020") == "20240115"


def test_instances_at_every_scope(archive: WebArchive) -> None:
    in_series = _json(archive, f"/studies/{DOE_STUDY}/series/{DOE_CT}/instances")
    assert sorted(_value(item, "00200013") for item in in_series) == [1, 2]
    for item in in_series:
        uid = _value(item, "00080018")
        assert _value(item, "00081190") == (
            f"{archive.url}/studies/{DOE_STUDY}/series/{DOE_CT}/instances/{uid}")
        assert _value(item, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
        assert isinstance(_value(item, "00280010"), int)
    in_study = _json(archive, f"/studies/{DOE_STUDY}/instances")
    assert len(in_study) == 3
    assert _values(in_study, "0008103E") == ["CT chest", "CT chest", "MR head"]
    uid = _value(in_series[0], "00080018")
    everywhere = _json(archive, "/instances", SOPInstanceUID=uid)
    assert len(everywhere) == 1
    assert _value(everywhere[0], "00100020") == "P-DOE-1"  # study attributes too
    frames = _json(archive, f"/studies/{FRAMES_STUDY}/instances")
    assert frames[0]["00280008"] == {"vr": "IS", "Value": [3]}


# -- includefield, paging ------------------------------------------------------------------


def test_includefield_list_repeated_tag_and_all(archive: WebArchive) -> None:
    response = archive.http.get(
        f"{archive.url}/studies",
        params=[("PatientID", "P-DOE-1"), ("includefield", "InstitutionName,00081060"),
                ("includefield", "PatientAge")],
    )
    assert response.status_code == 200
    study = response.json()[0]
    assert _value(study, "00080080") == "General Hospital"
    assert "00081060" in study and "00101010" in study
    assert "Warning" not in response.headers
    everything = _json(archive, "/studies", PatientID="P-DOE-1", includefield="all")[0]
    assert _value(everything, "00080080") == "General Hospital"
    assert "00100040" in everything and "00080062" in everything
    assert "0020000E" not in everything  # a series attribute, not a study's


def test_includefield_that_cannot_be_returned_is_named_in_a_warning(archive: WebArchive
                                                                     ) -> None:
    response = _get(archive, "/studies", PatientID="P-DOE-1",
                    includefield="ImageComments")
    assert response.status_code == 200
    assert len(response.json()) == 1
    assert response.headers["Warning"].startswith("299 ")
    assert "ImageComments" in response.headers["Warning"]


def test_limit_and_offset_page_without_gaps_or_duplicates(archive: WebArchive) -> None:
    pages = [_json(archive, "/studies", PatientID="PAGE-*", limit=5, offset=offset)
             for offset in (0, 5, 10, 15)]
    assert [len(page) for page in pages] == [5, 5, 2, 0]
    uids = [_value(item, "0020000D") for page in pages for item in page]
    assert len(uids) == len(set(uids)) == 12
    assert set(uids) == set(PAGE_STUDIES)
    again = _json(archive, "/studies", PatientID="PAGE-*", limit=5, offset=5)
    assert [_value(i, "0020000D") for i in again] == [_value(i, "0020000D") for i in pages[1]]


# -- errors and warnings -------------------------------------------------------------------


def test_unsupported_parameters_are_ignored_with_a_warning(archive: WebArchive) -> None:
    response = _get(archive, "/studies", PatientID="P-DOE-1", NoSuchThing="1",
                    BodyPartThickness="3")
    assert response.status_code == 200
    assert _values(response.json(), "0020000D") == [DOE_STUDY]
    warning = response.headers["Warning"]
    assert warning.startswith("299 ")
    assert "NoSuchThing" in warning and "BodyPartThickness" in warning


@pytest.mark.parametrize(
    ("path", "params", "words"),
    [
        ("/studies", {"limit": "abc"}, "limit"),
        ("/studies", {"offset": "-1"}, "offset"),
        ("/studies", {"StudyDate": "20240201-20240101"}, "ends before it starts"),
        ("/studies", {"StudyDate": "2024-13-45"}, "StudyDate"),
        ("/studies", {"StudyInstanceUID": "1.2.abc"}, "not a valid UID"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
        ("/studies/1.2.abc/series", {}, "not a valid UID"),
        ("/studies/1.2.3/series/x.y/instances", {}, "not a valid UID"),
    ],
)
def test_malformed_values_answer_400_with_a_message(
    archive: WebArchive, path: str, params: dict[str, str], words: str
) -> None:
    response = _get(archive, path, **params)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    assert _json(archive, "/studies", PatientID="P-DOE-1")  # still serving


def test_an_accept_without_json_is_406(archive: WebArchive) -> None:
    response = archive.http.get(f"{archive.url}/studies",
                                headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406
    assert archive.http.get(f"{archive.url}/studies",
                            headers={"Accept": "application/json"}).status_code == 200


def test_large_answers_are_gzipped_when_asked(archive: WebArchive) -> None:
    response = archive.http.get(f"{archive.url}/studies",
                                headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == "gzip"
    assert len(response.json()) >= 12


def test_no_cors_by_default(archive: WebArchive) -> None:
    """Which origins get CORS is tested in test_cors.py; by default none does."""
    response = archive.http.get(f"{archive.url}/studies", headers={"Origin": "http://viewer"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


# -- dicomweb-client -----------------------------------------------------------------------


def test_dicomweb_client_searches(archive: WebArchive) -> None:
    client = DICOMwebClient(url=archive.url)
    studies = client.search_for_studies(search_filters={"PatientName": "Smith*"},
                                        fields=["InstitutionName"])
    assert sorted(_value(s, "00100020") for s in studies) == ["50%_OFF", "50XXOFF"]
    series = client.search_for_series(DOE_STUDY)
    assert len(series) == 2
    instances = client.search_for_instances(DOE_STUDY, DOE_CT)
    assert len(instances) == 2
    page = client.search_for_studies(search_filters={"PatientID": "PAGE-*"}, limit=3,
                                     offset=3)
    assert len(page) == 3


# -- the server's cap ----------------------------------------------------------------------


@pytest.fixture
def capped_server(tmp_path: Path, sqlite_url: str) -> Iterator[PacsServer]:
    """At most 4 results, and names matched exactly unless a request asks for fuzzy."""
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        start_env={"PACS_MAX_QUERY_RESULTS": "4",
                                   "PACS_FUZZY_PERSON_NAMES": "false"}).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_result_cut_by_the_cap_says_so(capped_server: PacsServer, tmp_path: Path) -> None:
    archive = WebArchive(capped_server, tmp_path, httpx.Client(timeout=60))
    try:
        archive.store(ct_instance(PatientID=f"CAP-{n}", PatientName=f"Cap^{n}",
                                  StudyInstanceUID=make_uid("cap", n)) for n in range(6))
        response = _get(archive, "/studies")
        assert response.status_code == 200
        assert len(response.json()) == 4
        assert "maximum supported by the server" in response.headers["Warning"]
        uncut = _get(archive, "/studies", limit=3)
        assert len(uncut.json()) == 3 and "Warning" not in uncut.headers
        # exact names on this server, unless the request asks for fuzzy matching
        assert _json(archive, "/studies", PatientName="cap^1") == []
        assert _json(archive, "/studies", PatientName="cap^1", fuzzymatching="false") == []
        fuzzy = _json(archive, "/studies", PatientName="cap^1", fuzzymatching="true")
        assert _values(fuzzy, "00100020") == ["CAP-1"]
    finally:
        archive.http.close()
