"""Query/Retrieve SCP against DCMTK findscu, movescu, getscu and storescp (PS3.4 C).

One archive per database backend, filled once by storescu: a few patients chosen for the
matching rules, a 300-instance study, JPEG 2000 and RLE series, and a quarantined study that
must stay invisible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from pacs.services.workflow import StudyState
from storage.index import Index
from tests.factories.datasets import (
    EncodingUnavailable,
    ct_instance,
    encode,
    make_uid,
    mr_instance,
    non_ascii_instance,
    write_part10,
)
from tests.support import dcmtk
from tests.support.files import comparable
from tests.support.index import index_datasets
from tests.support.server import PacsServer, free_port

BIG_STUDY = make_uid("qr", "big-study")
J2K_STUDY = make_uid("qr", "j2k-study")
HIDDEN_STUDY = make_uid("qr", "hidden-study")
DOE_STUDY = make_uid("qr", "doe-john-study")


@dataclass
class Archive:
    server: PacsServer
    destination: dcmtk.Storescp  # accepts every transfer syntax
    plain: dcmtk.Storescp  # accepts uncompressed transfer syntaxes only
    workdir: Path
    sent: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID → file sent

    def find(
        self, level: str, *keys: str, model: str = "-S", extra: tuple[str, ...] = ()
    ) -> list[Dataset]:
        result, responses = dcmtk.findscu(
            self.server.dimse_port, [f"QueryRetrieveLevel={level}", *keys],
            workdir=self.workdir, model=model, extra=extra,
        )
        assert result.returncode == 0, dcmtk.status_lines(result)
        return responses


def _population(folder: Path) -> list[Path]:
    files: list[Dataset] = []
    doe = {"PatientID": "P-DOE-1", "PatientName": "Doe^John", "StudyDate": "20240115",
           "StudyInstanceUID": DOE_STUDY, "AccessionNumber": "ACC-1"}
    files += [ct_instance(InstanceNumber=n, SeriesNumber=1, **doe) for n in (1, 2)]
    files.append(mr_instance(InstanceNumber=1, SeriesNumber=2, **doe))
    files.append(ct_instance(PatientID="P-DOE-2", PatientName="DOE^JANE", StudyDate="20231220"))
    files.append(non_ascii_instance("ISO_IR 192", PatientID="P-MUE", StudyDate="20240201"))
    files.append(ct_instance(PatientID="50%_OFF", PatientName="Smith^Anna", StudyDate="20240131"))
    files.append(ct_instance(PatientID="50XXOFF", PatientName="Smith^Bob", StudyDate="20231231"))
    files.append(ct_instance(PatientID="P-QUAR", PatientName="Doe^Hidden", StudyDate="20240110",
                             StudyInstanceUID=HIDDEN_STUDY))
    big = {"PatientID": "P-BIG", "PatientName": "Big^Study", "StudyDate": "20240301",
           "StudyInstanceUID": BIG_STUDY, "Rows": 8, "Columns": 8}
    files += [
        ct_instance(SeriesNumber=1 + n // 100, InstanceNumber=1 + n % 100, **big)
        for n in range(300)
    ]
    compressed = {"PatientID": "P-J2K", "PatientName": "Codec^Case", "StudyDate": "20240305",
                  "StudyInstanceUID": J2K_STUDY}
    for series, syntax in ((1, JPEG2000Lossless), (2, RLELossless)):
        for number in (1, 2):
            try:
                files.append(encode(ct_instance(SeriesNumber=series, InstanceNumber=number,
                                                 **compressed), syntax))
            except EncodingUnavailable as reason:
                pytest.fail(f"cannot build the {syntax.name} series: {reason}")
    return [write_part10(ds, folder / f"{n:04d}.dcm") for n, ds in enumerate(files)]


@pytest.fixture(scope="module")
def archive(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("qr")
    destination = dcmtk.Storescp(root / "dest").start()
    plain = dcmtk.Storescp(root / "plain", ae_title="PLAIN", accept_all=False).start()
    server = PacsServer(
        data_dir=root / "data", database_url=module_database_url,
        extra_args=["--peer", destination.peer, "--peer", plain.peer,
                    "--peer", f"DEAD=127.0.0.1:{free_port()}"],
    )
    try:
        server.start()
        files = _population(root / "files")
        result = dcmtk.storescu(server.dimse_port, files, workdir=root)
        assert dcmtk.successes(result) == len(files), dcmtk.status_lines(result)
        index = Index(module_database_url)
        try:
            with index.unit_of_work(write=True) as repository:
                assert repository.studies.set_state(HIDDEN_STUDY, StudyState.QUARANTINED)
        finally:
            index.dispose()
        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        yield Archive(server, destination, plain, root, sent)
    finally:
        server.stop()
        destination.stop()
        plain.stop()


def _values(responses: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(r.get(keyword, "")) for r in responses)


# -- C-FIND matching ---------------------------------------------------------------------


def test_wildcard_person_name_ignores_case_and_skips_quarantined(archive: Archive) -> None:
    found = archive.find("STUDY", "PatientName=doe*", "PatientID", "StudyInstanceUID")
    assert _values(found, "PatientName") == ["DOE^JANE", "Doe^John"]


def test_patient_root_patient_level_with_counts(archive: Archive) -> None:
    found = archive.find(
        "PATIENT", "PatientID=P-DOE-1", "PatientName", "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances", model="-P",
    )
    assert len(found) == 1
    patient = found[0]
    assert patient.PatientName == "Doe^John"
    assert patient.QueryRetrieveLevel == "PATIENT"
    assert (int(patient.NumberOfPatientRelatedStudies), int(patient.NumberOfPatientRelatedSeries),
            int(patient.NumberOfPatientRelatedInstances)) == (1, 2, 3)


def test_quarantined_patient_is_invisible(archive: Archive) -> None:
    assert archive.find("PATIENT", "PatientID=P-QUAR", model="-P") == []
    assert archive.find("STUDY", f"StudyInstanceUID={HIDDEN_STUDY}") == []
    assert archive.find("SERIES", f"StudyInstanceUID={HIDDEN_STUDY}", "SeriesInstanceUID") == []


def test_non_ascii_name_found_and_returned_intact(archive: Archive) -> None:
    found = archive.find("STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=müller*",
                         "StudyDescription")
    assert len(found) == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == "MÜLLER^JÜRGEN"
    assert found[0].StudyDescription == "CT SCHÄDEL NATIV"


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("20240101-20240131", ["50%_OFF", "P-DOE-1"]),
        ("-20231231", ["50XXOFF", "P-DOE-2"]),
        ("20240301-", ["P-BIG", "P-J2K"]),
        ("20240201", ["P-MUE"]),
    ],
)
def test_study_date_single_and_ranges(archive: Archive, date: str, expected: list[str]) -> None:
    found = archive.find("STUDY", f"StudyDate={date}", "PatientID")
    assert _values(found, "PatientID") == expected


def test_question_mark_wildcard(archive: Archive) -> None:
    found = archive.find("STUDY", "PatientID=P-DOE-?", "PatientName")
    assert _values(found, "PatientID") == ["P-DOE-1", "P-DOE-2"]


def test_literal_percent_is_not_a_wildcard(archive: Archive) -> None:
    assert _values(archive.find("STUDY", "PatientID=50%*"), "PatientID") == ["50%_OFF"]
    assert _values(archive.find("STUDY", "PatientID=50%_OFF"), "PatientID") == ["50%_OFF"]
    assert archive.find("STUDY", "PatientID=50%") == []


def test_uid_list_matching(archive: Archive) -> None:
    found = archive.find("STUDY", f"StudyInstanceUID={BIG_STUDY}\\{J2K_STUDY}", "PatientID")
    assert _values(found, "PatientID") == ["P-BIG", "P-J2K"]


def test_other_vrs_match_exactly(archive: Archive) -> None:
    assert archive.find("STUDY", "PatientID=p-doe-1") == []
    assert len(archive.find("STUDY", "AccessionNumber=ACC-1")) == 1


def test_study_of_300_instances_is_one_response(archive: Archive) -> None:
    found = archive.find(
        "STUDY", f"StudyInstanceUID={BIG_STUDY}", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "PatientName", "StudyDate",
        "SOPClassesInStudy", "RetrieveAETitle", "StudyDescription", "ReferringPhysicianName",
    )
    assert len(found) == 1
    study = found[0]
    assert int(study.NumberOfStudyRelatedSeries) == 3
    assert int(study.NumberOfStudyRelatedInstances) == 300
    assert study.ModalitiesInStudy == "CT"
    assert study.SOPClassesInStudy == "1.2.840.10008.5.1.4.1.1.2"
    assert study.RetrieveAETitle == "PACS"
    assert study.StudyDate == "20240301"
    # every requested key is present, empty when unknown
    assert "ReferringPhysicianName" in study and study.ReferringPhysicianName == ""


def test_series_level_one_response_per_series(archive: Archive) -> None:
    found = archive.find(
        "SERIES", f"StudyInstanceUID={BIG_STUDY}", "SeriesInstanceUID", "SeriesNumber",
        "Modality", "NumberOfSeriesRelatedInstances",
    )
    assert sorted(int(s.SeriesNumber) for s in found) == [1, 2, 3]
    assert {int(s.NumberOfSeriesRelatedInstances) for s in found} == {100}
    assert {s.Modality for s in found} == {"CT"}


def test_image_level_patient_root(archive: Archive) -> None:
    series = archive.find("SERIES", f"StudyInstanceUID={DOE_STUDY}", "SeriesInstanceUID",
                          "Modality")
    ct = next(s for s in series if s.Modality == "CT")
    found = archive.find(
        "IMAGE", "PatientID=P-DOE-1", f"StudyInstanceUID={DOE_STUDY}",
        f"SeriesInstanceUID={ct.SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber",
        model="-P",
    )
    assert sorted(int(i.InstanceNumber) for i in found) == [1, 2]
    assert all(i.SOPInstanceUID in archive.sent for i in found)


def test_modalities_in_study_matching(archive: Archive) -> None:
    found = archive.find("STUDY", "ModalitiesInStudy=MR", "PatientID")
    assert _values(found, "PatientID") == ["P-DOE-1"]
    assert list(found[0].ModalitiesInStudy) == ["CT", "MR"]


@pytest.mark.parametrize(
    ("level", "keys", "model"),
    [
        ("SERIES", ["SeriesInstanceUID"], "-S"),  # no StudyInstanceUID above the level
        ("STUDY", ["StudyInstanceUID"], "-P"),  # Patient Root: PatientID missing
        ("PATIENT", ["PatientID"], "-S"),  # no PATIENT level in Study Root
        ("STUDY", ["SeriesInstanceUID=1.2.3"], "-S"),  # a matching key below the level
        ("WRONG", ["PatientID"], "-S"),
    ],
)
def test_bad_identifier_is_refused_with_a_comment(
    archive: Archive, level: str, keys: list[str], model: str
) -> None:
    result, responses = dcmtk.findscu(
        archive.server.dimse_port, [f"QueryRetrieveLevel={level}", *keys],
        workdir=archive.workdir, model=model, extra=("-d",),
    )
    text = dcmtk.status_lines(result)
    assert responses == []
    assert "DIMSE Status                  : 0xa900" in text, text
    assert "ErrorComment" in text, text


def test_malformed_date_is_unable_to_process(archive: Archive) -> None:
    result, responses = dcmtk.findscu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", "StudyDate=2024-01-01"],
        workdir=archive.workdir, extra=("-d",),
    )
    text = dcmtk.status_lines(result)
    assert responses == []
    assert "DIMSE Status                  : 0xc000" in text, text
    assert "StudyDate" in text.split("ErrorComment")[0].rsplit("LO [", 1)[-1], text


def _index_directly(database_url: str, datasets: list[Dataset]) -> None:
    """Fill the index as ingest does, without files (for queries only)."""
    index = Index(database_url)
    index.upgrade()
    try:
        index_datasets(index, datasets)
    finally:
        index.dispose()


def test_cancel_stops_a_long_find(tmp_path: Path, sqlite_url: str) -> None:
    studies = [ct_instance(PatientID=f"P{n:05d}", PatientName=f"Many^{n}", Rows=2, Columns=2)
               for n in range(1500)]
    _index_directly(sqlite_url, studies)
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url).start()
    try:
        result, responses = dcmtk.findscu(
            server.dimse_port, ["QueryRetrieveLevel=STUDY", "PatientID", "StudyInstanceUID"],
            workdir=tmp_path, extra=("--cancel", "5"),
        )
        everything, all_responses = dcmtk.findscu(
            server.dimse_port, ["QueryRetrieveLevel=STUDY", "PatientID"], workdir=tmp_path,
        )
    finally:
        server.stop()
    text = dcmtk.status_lines(result)
    assert result.returncode == 0, text
    assert "Received Final Find Response (Cancel" in text, text
    assert 5 <= len(responses) < 1000, text
    # without a cancel, the result is capped at 1,000 (the default cap) with a warning logged
    assert len(all_responses) == 1000
    assert "result capped at 1000" in server.log()


def _series_uid(archive: Archive, number: int) -> str:
    found = archive.find("SERIES", f"StudyInstanceUID={BIG_STUDY}", "SeriesInstanceUID",
                         f"SeriesNumber={number}")
    assert len(found) == 1
    return str(found[0].SeriesInstanceUID)


# -- C-MOVE --------------------------------------------------------------------------------


def _dataset_bytes_by_uid(files: list[Path]) -> dict[str, bytes]:
    out = {}
    for path in files:
        out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = comparable(
            path.read_bytes()
        )
    return out


def test_move_study_delivers_every_instance_byte_identical(archive: Archive) -> None:
    archive.destination.clear()
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={BIG_STUDY}"],
        destination="DEST",
    )
    text = dcmtk.status_lines(result)
    assert result.returncode == 0, text
    assert "Final Move Response (Success)" in text, text
    received = _dataset_bytes_by_uid(archive.destination.files())
    assert len(received) == 300
    for uid, data in received.items():
        assert data == comparable(archive.sent[uid].read_bytes()), uid


def test_move_compressed_as_stored_to_a_peer_that_accepts_it(archive: Archive) -> None:
    archive.destination.clear()
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={J2K_STUDY}"],
        destination="DEST",
    )
    assert "Final Move Response (Success)" in dcmtk.status_lines(result)
    received = _dataset_bytes_by_uid(archive.destination.files())
    assert len(received) == 4
    for uid, data in received.items():
        assert data == comparable(archive.sent[uid].read_bytes()), uid


def test_move_decompresses_for_a_peer_accepting_uncompressed_only(archive: Archive) -> None:
    archive.plain.clear()
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={J2K_STUDY}"],
        destination="PLAIN",
    )
    assert "Final Move Response (Success)" in dcmtk.status_lines(result)
    files = archive.plain.files()
    assert len(files) == 4
    for path in files:
        received = pydicom.dcmread(path)
        original = pydicom.dcmread(archive.sent[str(received.SOPInstanceUID)])
        assert not received.file_meta.TransferSyntaxUID.is_compressed
        assert original.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(received.pixel_array, original.pixel_array)


def test_move_series_level_with_pending_counts(archive: Archive) -> None:
    archive.destination.clear()
    series = _series_uid(archive, 2)
    result = dcmtk.movescu(
        archive.server.dimse_port,
        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={BIG_STUDY}",
         f"SeriesInstanceUID={series}"],
        destination="DEST", extra=("-d",),
    )
    text = dcmtk.status_lines(result)
    assert len(archive.destination.files()) == 100
    assert "Remaining Suboperations       : 99" in text, text
    final = text.split("Received Final Move Response")[1]
    assert "DIMSE Status                  : 0x0000" in final, final
    assert "Completed Suboperations       : 100" in final, final
    assert "Failed Suboperations          : 0" in final, final


def test_move_to_unknown_destination_is_a801(archive: Archive) -> None:
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={BIG_STUDY}"],
        destination="NOBODY",
    )
    assert "MoveDestinationUnknown" in dcmtk.status_lines(result), dcmtk.status_lines(result)


def test_move_of_a_quarantined_study_sends_nothing(archive: Archive) -> None:
    archive.destination.clear()
    result = dcmtk.movescu(
        archive.server.dimse_port,
        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={HIDDEN_STUDY}"], destination="DEST",
    )
    assert "Final Move Response (Success)" in dcmtk.status_lines(result)
    assert archive.destination.files() == []


def test_move_cancel_stops_the_sub_operations(archive: Archive) -> None:
    archive.destination.clear()
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={BIG_STUDY}"],
        destination="DEST", extra=("--cancel", "3"),
    )
    text = dcmtk.status_lines(result)
    assert "Cancel" in text, text
    assert 3 <= len(archive.destination.files()) < 300


# -- C-GET ---------------------------------------------------------------------------------


def test_get_series_into_getscu_folder(archive: Archive) -> None:
    output = archive.workdir / "get-series"
    series = _series_uid(archive, 3)
    result = dcmtk.getscu(
        archive.server.dimse_port,
        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={BIG_STUDY}",
         f"SeriesInstanceUID={series}"],
        output=output,
    )
    text = dcmtk.status_lines(result)
    assert result.returncode == 0, text
    received = _dataset_bytes_by_uid(sorted(output.iterdir()))
    assert len(received) == 100
    for uid, data in received.items():
        assert data == comparable(archive.sent[uid].read_bytes()), uid


def test_get_decompresses_what_getscu_does_not_accept(archive: Archive) -> None:
    output = archive.workdir / "get-j2k"
    result = dcmtk.getscu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={J2K_STUDY}"],
        output=output,
    )
    assert result.returncode == 0, dcmtk.status_lines(result)
    files = sorted(output.iterdir())
    assert len(files) == 4
    for path in files:
        received = pydicom.dcmread(path)
        original = pydicom.dcmread(archive.sent[str(received.SOPInstanceUID)])
        assert np.array_equal(received.pixel_array, original.pixel_array)


def test_get_of_a_quarantined_study_sends_nothing(archive: Archive) -> None:
    output = archive.workdir / "get-hidden"
    result = dcmtk.getscu(
        archive.server.dimse_port,
        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={HIDDEN_STUDY}"], output=output,
    )
    assert result.returncode == 0, dcmtk.status_lines(result)
    assert list(output.iterdir()) == []


def test_move_patient_level_in_patient_root_sends_every_archived_study(archive: Archive) -> None:
    archive.destination.clear()
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=PATIENT", "PatientID=P-DOE-1"],
        destination="DEST", model="-P",
    )
    assert "Final Move Response (Success)" in dcmtk.status_lines(result), dcmtk.status_lines(
        result
    )
    received = _dataset_bytes_by_uid(archive.destination.files())
    assert len(received) == 3  # the CT pair and the MR of Doe^John's one study


def test_get_image_level_with_a_uid_list(archive: Archive) -> None:
    series = archive.find("SERIES", f"StudyInstanceUID={DOE_STUDY}", "SeriesInstanceUID",
                          "Modality")
    ct = next(s for s in series if s.Modality == "CT")
    images = archive.find("IMAGE", f"StudyInstanceUID={DOE_STUDY}",
                          f"SeriesInstanceUID={ct.SeriesInstanceUID}", "SOPInstanceUID")
    uids = sorted(str(i.SOPInstanceUID) for i in images)
    output = archive.workdir / "get-images"
    result = dcmtk.getscu(
        archive.server.dimse_port,
        ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={DOE_STUDY}",
         f"SeriesInstanceUID={ct.SeriesInstanceUID}", "SOPInstanceUID=" + "\\".join(uids)],
        output=output,
    )
    assert result.returncode == 0, dcmtk.status_lines(result)
    assert sorted(_dataset_bytes_by_uid(sorted(output.iterdir()))) == uids


@pytest.mark.fast_transport("a destination that cannot be reached is 0xA801, without a comment")
def test_move_to_a_peer_that_is_down_fails_with_a_comment(archive: Archive) -> None:
    result = dcmtk.movescu(
        archive.server.dimse_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={DOE_STUDY}"],
        destination="DEAD", extra=("-d",),
    )
    text = dcmtk.status_lines(result)
    final = text.split("Received Final Move Response")[1]
    assert "DIMSE Status                  : 0xa702" in final, final
    assert "cannot associate with DEAD" in final, final
    assert dcmtk.echoscu(archive.server.dimse_port).returncode == 0  # still serving
