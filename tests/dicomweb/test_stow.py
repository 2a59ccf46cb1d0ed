"""STOW-RS against a running server: what is stored is found by C-FIND and kept byte for byte;
failures are listed per instance; malformed, truncated or oversize bodies store nothing."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from storage.attributes import Level
from tests.dicomweb.conftest import WebArchive
from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.server import PacsServer

BOUNDARY = "stow-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED_SOP = "00081199"
FAILED_SOP = "00081198"
RETRIEVE_URL = "00081190"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xC409


def _multipart(parts: list[bytes], *, content_type: str = "application/dicom",
               close: bool = True) -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        out.write(part)
    if close:
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def _post(archive: WebArchive, body: bytes | Iterator[bytes], *, path: str = "/studies",
          content_type: str = MULTIPART, url: str | None = None) -> httpx.Response:
    return archive.http.post(
        f"{url or archive.url}{path}", content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )


def _read(data: bytes) -> Dataset:
    """As a client holds a file it read from disk: preamble and File Meta as they were."""
    return pydicom.dcmread(io.BytesIO(data))


def _items(answer: dict[str, Any], sequence: str) -> list[dict[str, Any]]:
    return list(answer.get(sequence, {}).get("Value", []))


def _value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def _state(server: PacsServer) -> tuple[int, int, list[Path]]:
    """(instance rows, committed blobs, non-empty files in tmp/)."""
    with server.services() as services:
        with services.index.unit_of_work() as repo:
            instances = repo.counts()[Level.IMAGE]
        blobs = len(list(services.blobs.keys()))
        # the DIMSE receiver may keep empty files ready for its next receive; nothing else
        leftovers = [p for p in services.blobs.staging.staged() if p.stat().st_size]
    return instances, blobs, leftovers


def _stored_bytes(server: PacsServer, sop_instance_uid: str) -> bytes:
    with server.services() as services:
        with services.index.unit_of_work() as repo:
            stored = repo.find_instance(sop_instance_uid)
        assert stored is not None, sop_instance_uid
        with services.blobs.open(stored.blob_key) as handle:
            return handle.read()


def _answers_health(archive: WebArchive) -> None:
    assert archive.http.get(f"{archive.server.base_url}/health").status_code == 200


def test_dicomweb_client_stores_instances_found_by_c_find_and_kept_byte_for_byte(
    web_archive: WebArchive,
) -> None:
    series = [f.ct_instance(PatientID="STOW-1", InstanceNumber=n) for n in (1, 2, 3)]
    files = [f.to_part10_bytes(ds) for ds in series] + [
        f.to_part10_bytes(f.mr_instance(PatientID="STOW-1", PatientName="DOE^JOHN",
                                        StudyInstanceUID=series[0].StudyInstanceUID))
    ]
    before = _state(web_archive.server)[0]

    answer = DICOMwebClient(url=web_archive.url).store_instances([_read(b) for b in files])

    study = str(series[0].StudyInstanceUID)
    assert "FailedSOPSequence" not in answer
    # dicomweb-client sends "Host: 127.0.0.1" without the port: the server adds its own
    assert answer.RetrieveURL == f"{web_archive.url}/studies/{study}"
    referenced = answer.ReferencedSOPSequence
    sent = [_read(b) for b in files]
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [
        ds.SOPInstanceUID for ds in sent
    ]
    assert [item.ReferencedSOPClassUID for item in referenced] == [ds.SOPClassUID for ds in sent]
    assert referenced[0].RetrieveURL.endswith(
        f"/dicom-web/studies/{study}/series/{series[0].SeriesInstanceUID}"
        f"/instances/{series[0].SOPInstanceUID}"
    )
    assert _state(web_archive.server)[0] == before + 4
    for data, ds in zip(files, sent, strict=True):
        assert _stored_bytes(web_archive.server, str(ds.SOPInstanceUID)) == data

    found: list[str] = []
    for series_uid in sorted({str(ds.SeriesInstanceUID) for ds in sent}):
        _, responses = dcmtk.findscu(
            web_archive.server.dimse_port,
            ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
             f"SeriesInstanceUID={series_uid}", "SOPInstanceUID"],
            workdir=web_archive.workdir,
        )
        found += [str(r.SOPInstanceUID) for r in responses]
    assert sorted(found) == sorted(str(ds.SOPInstanceUID) for ds in sent)


def test_resending_is_idempotent_and_a_success(web_archive: WebArchive) -> None:
    files = [f.to_part10_bytes(f.ct_instance(PatientID="STOW-2", InstanceNumber=n))
             for n in (1, 2)]
    first = _post(web_archive, _multipart(files))
    counts = _state(web_archive.server)[:2]

    again = _post(web_archive, _multipart(files))

    assert first.status_code == again.status_code == 200
    assert again.headers["content-type"] == "application/dicom+json"
    ds = f.ct_instance(PatientID="STOW-2", InstanceNumber=2)
    assert [_value(i, RETRIEVE_URL) for i in _items(again.json(), REFERENCED_SOP)][1] == (
        f"{web_archive.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    assert _value(again.json(), RETRIEVE_URL) == f"{web_archive.url}/studies/{ds.StudyInstanceUID}"
    assert FAILED_SOP not in again.json()
    assert _state(web_archive.server)[:2] == counts


def test_many_parts_of_one_new_study_and_a_repeated_one_are_all_stored_in_order(
    web_archive: WebArchive,
) -> None:
    """Parts are stored several at once: the new study is created once, the answer keeps the
    parts' order, and an instance sent twice in one request is a success twice."""
    series = [f.ct_instance(PatientID="STOW-2B", InstanceNumber=n) for n in range(1, 31)]
    files = [f.to_part10_bytes(ds) for ds in series]
    before = _state(web_archive.server)[0]

    response = _post(web_archive, _multipart([*files, files[0]]))

    assert response.status_code == 200
    assert [_value(i, SOP_INSTANCE) for i in _items(response.json(), REFERENCED_SOP)] == [
        ds.SOPInstanceUID for ds in [*series, series[0]]
    ]
    assert _state(web_archive.server)[0] == before + 30
    _, [study] = dcmtk.findscu(
        web_archive.server.dimse_port,
        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={series[0].StudyInstanceUID}",
         "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
        workdir=web_archive.workdir,
    )
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (1, 30)


def test_one_corrupt_part_fails_alone_with_202(web_archive: WebArchive) -> None:
    good = [f.to_part10_bytes(f.ct_instance(PatientID="STOW-3", InstanceNumber=n))
            for n in (1, 2)]
    before = _state(web_archive.server)[0]

    response = _post(web_archive, _multipart([good[0], f.corrupt_bytes(), good[1]]))

    assert response.status_code == 202
    answer = response.json()
    failed = _items(answer, FAILED_SOP)
    assert len(failed) == 1
    assert _value(failed[0], FAILURE_REASON) == CANNOT_UNDERSTAND
    assert failed[0][FAILURE_REASON]["vr"] == "US"
    assert len(_items(answer, REFERENCED_SOP)) == 2
    assert response.headers["warning"].startswith('299 pacs "part 2: ')
    assert _state(web_archive.server)[0] == before + 2
    _answers_health(web_archive)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(f.not_dicom_bytes(), id="not-dicom"),
        pytest.param(f.truncated_bytes(f.ct_instance(PatientID="STOW-4T")), id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(f.to_part10_bytes(f.missing_sop_uid_instance(PatientID="STOW-4M")),
                     id="no-sop-instance-uid"),
    ],
)
def test_bad_instances_fail_with_cannot_understand(web_archive: WebArchive, bad: bytes) -> None:
    good = f.to_part10_bytes(f.ct_instance(PatientID="STOW-4", InstanceNumber=len(bad)))

    response = _post(web_archive, _multipart([bad, good]))

    assert response.status_code == 202
    assert [_value(i, FAILURE_REASON) for i in _items(response.json(), FAILED_SOP)] == [
        CANNOT_UNDERSTAND
    ]


def test_a_data_set_built_in_memory_is_stored_with_a_part_10_header(
    web_archive: WebArchive,
) -> None:
    """What dicomweb-client sends for a Dataset built in memory (pydicom 3 writes its file meta
    group but no preamble): stored, with a Part 10 header made for it and the data set bytes
    unchanged; a bare implicit VR data set likewise."""
    built = f.ct_instance(PatientID="STOW-NO-P10", PatientName="Bare^Dataset")
    with_meta = io.BytesIO()
    pydicom.dcmwrite(with_meta, built)
    bare = pydicom.Dataset()
    bare.update(f.ct_instance(PatientID="STOW-NO-P10", PatientName="Bare^Dataset",
                              InstanceNumber=2, StudyInstanceUID=built.StudyInstanceUID))
    implicit = io.BytesIO()
    pydicom.dcmwrite(implicit, bare, implicit_vr=True, little_endian=True)
    assert with_meta.getvalue()[128:132] != b"DICM"

    answer = DICOMwebClient(url=web_archive.url).store_instances([built])
    response = _post(web_archive, _multipart([implicit.getvalue()]))

    assert "FailedSOPSequence" not in answer
    assert response.status_code == 200, response.text
    stored = pydicom.dcmread(io.BytesIO(_stored_bytes(web_archive.server,
                                                      str(built.SOPInstanceUID))))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (stored.pixel_array == built.pixel_array).all()
    second = _stored_bytes(web_archive.server, str(bare.SOPInstanceUID))
    assert second.endswith(implicit.getvalue())  # the data set bytes as sent
    assert pydicom.dcmread(io.BytesIO(second)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_all_parts_failing_is_409_with_the_reasons(web_archive: WebArchive) -> None:
    before = _state(web_archive.server)

    response = _post(web_archive, _multipart([f.corrupt_bytes(), f.not_dicom_bytes()]))

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    assert REFERENCED_SOP not in answer and RETRIEVE_URL not in answer
    assert [_value(i, FAILURE_REASON) for i in _items(answer, FAILED_SOP)] == [
        CANNOT_UNDERSTAND, CANNOT_UNDERSTAND
    ]
    assert _state(web_archive.server) == before
    _answers_health(web_archive)


def test_answer_in_dicom_xml_when_accept_prefers_it(web_archive: WebArchive) -> None:
    good = f.ct_instance(PatientID="STOW-XML")
    response = web_archive.http.post(
        f"{web_archive.url}/studies", content=_multipart([f.to_part10_bytes(good), b"junk"]),
        headers={"Content-Type": MULTIPART,
                 "Accept": "application/dicom+json; q=0.5, application/dicom+xml"},
    )

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+xml"
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ElementTree.fromstring(response.content)
    referenced = root.find("d:DicomAttribute[@keyword='ReferencedSOPSequence']", ns)
    assert referenced is not None and referenced.get("vr") == "SQ"
    instance = referenced.find(
        "d:Item/d:DicomAttribute[@tag='00081155']/d:Value[@number='1']", ns)
    assert instance is not None and instance.text == good.SOPInstanceUID
    reason = root.find("d:DicomAttribute[@tag='00081198']/d:Item/"
                       "d:DicomAttribute[@keyword='FailureReason']/d:Value", ns)
    assert reason is not None and reason.text == str(CANNOT_UNDERSTAND)


def test_accept_without_dicom_json_or_xml_is_406_before_reading(
    web_archive: WebArchive,
) -> None:
    before = _state(web_archive.server)
    response = web_archive.http.post(
        f"{web_archive.url}/studies",
        content=_multipart([f.to_part10_bytes(f.ct_instance(PatientID="STOW-406"))]),
        headers={"Content-Type": MULTIPART, "Accept": "text/html"},
    )

    assert response.status_code == 406
    assert _state(web_archive.server) == before


def test_instance_of_another_study_fails_for_a_study_target(web_archive: WebArchive) -> None:
    mine = f.ct_instance(PatientID="STOW-5")
    other = f.ct_instance(PatientID="STOW-5-OTHER")
    study = str(mine.StudyInstanceUID)
    before = _state(web_archive.server)[0]

    response = _post(
        web_archive, _multipart([f.to_part10_bytes(mine), f.to_part10_bytes(other)]),
        path=f"/studies/{study}",
    )

    assert response.status_code == 202
    answer = response.json()
    assert _value(answer, RETRIEVE_URL) == f"{web_archive.url}/studies/{study}"
    [failed] = _items(answer, FAILED_SOP)
    assert _value(failed, FAILURE_REASON) == STUDY_MISMATCH
    assert _value(failed, SOP_INSTANCE) == other.SOPInstanceUID
    assert _value(failed, SOP_CLASS) == other.SOPClassUID
    [stored] = _items(answer, REFERENCED_SOP)
    assert _value(stored, SOP_INSTANCE) == mine.SOPInstanceUID
    assert _state(web_archive.server)[0] == before + 1
    with web_archive.server.services() as services:
        with services.index.unit_of_work() as repo:
            assert repo.find_instance(str(other.SOPInstanceUID)) is None


def test_dicomweb_client_stores_into_a_study(web_archive: WebArchive) -> None:
    ds = f.ct_instance(PatientID="STOW-6")

    answer = DICOMwebClient(url=web_archive.url).store_instances(
        [_read(f.to_part10_bytes(ds))], study_instance_uid=str(ds.StudyInstanceUID)
    )

    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        ds.SOPInstanceUID
    ]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "multipart/form-data; boundary=x",
        "",
    ],
)
def test_not_multipart_dicom_is_415(web_archive: WebArchive, content_type: str) -> None:
    data = f.to_part10_bytes(f.ct_instance(PatientID="STOW-7"))
    before = _state(web_archive.server)

    response = _post(web_archive, data, content_type=content_type)

    assert response.status_code == 415
    assert "error" in response.json()
    assert _state(web_archive.server) == before
    _answers_health(web_archive)


def test_type_parameter_unquoted_or_missing_is_accepted(web_archive: WebArchive) -> None:
    data = f.to_part10_bytes(f.ct_instance(PatientID="STOW-8"))
    for content_type in (f"multipart/related; type=application/dicom; boundary={BOUNDARY}",
                         f'multipart/related; boundary="{BOUNDARY}"'):
        assert _post(web_archive, _multipart([data]), content_type=content_type).status_code == 200


def test_parts_of_another_media_type_fail(web_archive: WebArchive) -> None:
    """The metadata and bulk data form (application/dicom+json parts) is not supported."""
    response = _post(web_archive, _multipart([b"[{}]"], content_type="application/dicom+json"),
                     content_type=f"multipart/related; boundary={BOUNDARY}")

    assert response.status_code == 409
    assert [_value(i, FAILURE_REASON) for i in _items(response.json(), FAILED_SOP)] == [
        CANNOT_UNDERSTAND
    ]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param('multipart/related; type="application/dicom"', b"--x--", id="no-boundary"),
        pytest.param(MULTIPART, f"--{BOUNDARY}--\r\n".encode(), id="no-parts"),
        pytest.param(MULTIPART, b"", id="empty-body"),
        pytest.param(MULTIPART, b"just some bytes", id="no-delimiter"),
    ],
)
def test_malformed_body_is_400(web_archive: WebArchive, content_type: str, body: bytes) -> None:
    before = _state(web_archive.server)

    response = _post(web_archive, body, content_type=content_type)

    assert response.status_code == 400
    assert response.json()["error"]
    assert _state(web_archive.server) == before
    _answers_health(web_archive)


@pytest.mark.parametrize("cut", ["in-second-part", "before-closing-delimiter"])
def test_truncated_body_is_400_and_stores_nothing(web_archive: WebArchive, cut: str) -> None:
    """Parts are stored only once the closing delimiter arrived: even the complete first part
    is not kept, so a client can send the same body again."""
    parts = [f.to_part10_bytes(f.ct_instance(PatientID=f"STOW-9-{cut}", InstanceNumber=n))
             for n in (1, 2)]
    whole = _multipart(parts)
    body = whole[: len(whole) - len(parts[1]) // 2] if cut == "in-second-part" else _multipart(
        parts, close=False)
    before = _state(web_archive.server)

    response = _post(web_archive, body)

    assert response.status_code == 400
    assert "closing delimiter" in response.json()["error"]
    assert _state(web_archive.server) == before
    assert _post(web_archive, whole).status_code == 200


def test_chunked_body_is_read_as_it_streams(web_archive: WebArchive) -> None:
    """A body sent chunked (no Content-Length), cut in odd places."""
    files = [f.to_part10_bytes(f.ct_instance(PatientID="STOW-10", InstanceNumber=n))
             for n in (1, 2, 3)]
    body = _multipart(files)

    response = _post(web_archive, (body[i:i + 333] for i in range(0, len(body), 333)))

    assert response.status_code == 200
    assert len(_items(response.json(), REFERENCED_SOP)) == 3


def test_client_going_away_mid_body_leaves_nothing(web_archive: WebArchive) -> None:
    server = web_archive.server
    data = f.to_part10_bytes(f.ct_instance(PatientID="STOW-11"))
    body = _multipart([data, data])
    before = _state(server)
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body) + 1000}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(head.encode() + body[: len(body) - 100])

    assert _eventually(lambda: _state(server) == before)
    _answers_health(web_archive)


def _eventually(check: Any, timeout: float = 10.0) -> bool:
    """Poll ``check`` until it holds (the server tidies up after the client has gone)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- a server with a 1 MB request limit ---------------------------------------------------------
@pytest.fixture(scope="module")
def small_archive(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebArchive]:
    root = tmp_path_factory.mktemp("web-small")
    server = PacsServer(data_dir=root / "data", database_url=_other_database(module_database_url,
                                                                             root),
                        start_env={"PACS_MAX_REQUEST_MB": "1"})
    server.start()
    try:
        with httpx.Client(timeout=60) as http:
            yield WebArchive(server, root, http)
    finally:
        server.stop()


def _other_database(url: str, root: Path) -> str:
    """SQLite: a file of its own; PostgreSQL: the module's database is fine (a separate data
    dir and the instance counts are compared before and after)."""
    return f"sqlite:///{root / 'index.sqlite'}" if url.startswith("sqlite") else url


def _big_instance(patient_id: str) -> bytes:
    data = f.to_part10_bytes(f.ct_instance(PatientID=patient_id, Rows=512, Columns=512))
    assert len(data) > 500_000
    return data


def test_content_length_over_the_limit_is_413_before_reading(small_archive: WebArchive) -> None:
    before = _state(small_archive.server)
    body = _multipart([_big_instance("STOW-12"), _big_instance("STOW-12B")])
    assert len(body) > 1_000_000

    response = _post(small_archive, body)

    assert response.status_code == 413
    assert _state(small_archive.server) == before
    _answers_health(small_archive)


def test_chunked_body_over_the_limit_is_413_and_leaves_nothing(
    small_archive: WebArchive,
) -> None:
    before = _state(small_archive.server)
    body = _multipart([_big_instance("STOW-13"), _big_instance("STOW-13B")])

    response = _post(small_archive, (body[i:i + 65536] for i in range(0, len(body), 65536)))

    assert response.status_code == 413
    assert _state(small_archive.server) == before
    small = f.to_part10_bytes(f.ct_instance(PatientID="STOW-13C"))
    assert _post(small_archive, _multipart([small])).status_code == 200


def test_a_body_that_would_eat_into_the_disk_reserve_is_503_before_reading(
    module_database_url: str, tmp_path: Path
) -> None:
    """The reserve is set far above the disk's size: every known length is refused."""
    server = PacsServer(data_dir=tmp_path / "data",
                        database_url=_other_database(module_database_url, tmp_path),
                        start_env={"PACS_MIN_FREE_SPACE_MB": str(10**9)})
    server.start()
    try:
        with httpx.Client(timeout=60) as http:
            archive = WebArchive(server, tmp_path, http)
            before = _state(server)
            data = f.to_part10_bytes(f.ct_instance(PatientID="STOW-14"))

            response = _post(archive, _multipart([data]))

            assert response.status_code == 503
            assert "no room" in response.json()["error"]
            assert _state(server) == before
            _answers_health(archive)
    finally:
        server.stop()
