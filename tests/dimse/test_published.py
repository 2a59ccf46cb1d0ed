"""Q/R on pynetdicom as published (``pacs.dimse.published``) against DCMTK findscu, movescu,
getscu and storescp.

The SCP is a pynetdicom AE in this process, with pynetdicom's own service classes: the fast
path (``tuning``, ``qr.install``) is never installed here, and every test checks it is not.
It serves C-ECHO and C-STORE with ``DimseHandlers``, Q/R with ``PublishedQueryRetrieve``, over a
real index and file store, with access control on (the AE registry): storescu stores, findscu,
movescu and getscu query and retrieve, CT1 may store only. Move destinations are registered as
``--peer`` registers them: DEST (a storescp accepting every transfer syntax), PLAIN (uncompressed
only) and DEAD (nothing listens). C-FIND answers are compared with those of a ``pacs serve``
(the fast path, in its own process) that stored the same files.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless
from pynetdicom import AE, _config, association, dimse_messages, dul, evt, sop_class
from pynetdicom.service_class import QueryRetrieveServiceClass

from pacs.dimse.access import AccessControl
from pacs.dimse.contexts import scp_contexts
from pacs.dimse.guard import RefusalAudit
from pacs.dimse.handlers import DimseHandlers
from pacs.dimse.inflight import InFlight
from pacs.dimse.published import PublishedQueryRetrieve
from pacs.dimse.qr import QueryRetrieveServices
from pacs.services.ae_registry import AeRegistry
from pacs.services.audit import AuditTrail
from pacs.services.ingest import IngestService
from pacs.services.query import QueryService
from pacs.services.retrieve import Destination, RetrieveService
from storage.attributes import Level
from storage.blobs import FileStore
from storage.index import Index
from storage.index.audit import AuditRecord
from storage.query import Condition, Query, SingleValue
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
from tests.support.wait import until

DOE_STUDY = make_uid("published", "doe-john-study")
BIG_STUDY = make_uid("published", "big-study")
J2K_STUDY = make_uid("published", "j2k-study")
HOLE_STUDY = make_uid("published", "hole-study")  # one of its files is removed from the store
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def as_published() -> None:
    """pynetdicom as released: none of the fast path's replacements is installed."""
    assert association.uid_to_service_class is sop_class.uid_to_service_class
    assert association.uid_to_service_class(STUDY_ROOT_FIND) is QueryRetrieveServiceClass
    assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
    assert dimse_messages.DIMSEMessage.decode_msg.__module__ == "pynetdicom.dimse_messages"
    assert dul.time.__name__ == "time"


@dataclass
class Site:
    port: int
    index: Index
    audit: AuditTrail
    blobs: FileStore
    query: QueryService
    destination: dcmtk.Storescp  # DEST: accepts every transfer syntax
    plain: dcmtk.Storescp  # PLAIN: uncompressed transfer syntaxes only
    workdir: Path
    sent: dict[str, Path]  # SOP Instance UID → file stored

    def find(self, level: str, *keys: str, model: str = "-S") -> list[Dataset]:
        result, responses = dcmtk.findscu(self.port, [f"QueryRetrieveLevel={level}", *keys],
                                          workdir=self.workdir, model=model)
        assert result.returncode == 0, dcmtk.status_lines(result)
        return responses

    def instances(self, study_uid: str) -> list[Any]:
        return self.query.instances(Query(level=Level.STUDY, conditions=(
            Condition("StudyInstanceUID", SingleValue(study_uid)),)))

    def audit_events(self, action: str) -> list[AuditRecord]:
        self.audit.flush()
        with self.index.unit_of_work() as repository:
            return repository.audit.events(action=action, limit=1000)


def _population(folder: Path) -> list[Path]:
    doe = {"PatientID": "P-DOE-1", "PatientName": "Doe^John", "StudyDate": "20240115",
           "StudyInstanceUID": DOE_STUDY}
    files = [ct_instance(InstanceNumber=n, SeriesNumber=1, **doe) for n in (1, 2)]
    files.append(mr_instance(InstanceNumber=1, SeriesNumber=2, **doe))
    files.append(ct_instance(PatientID="P-DOE-2", PatientName="DOE^JANE", StudyDate="20231220"))
    files.append(non_ascii_instance("ISO_IR 192", PatientID="P-MUE", StudyDate="20240201"))
    big = {"PatientID": "P-BIG", "PatientName": "Big^Study", "StudyInstanceUID": BIG_STUDY,
           "Rows": 8, "Columns": 8}
    files += [ct_instance(SeriesNumber=1 + n // 30, InstanceNumber=1 + n % 30, **big)
              for n in range(60)]
    hole = {"PatientID": "P-HOLE", "PatientName": "Hole^Case", "StudyInstanceUID": HOLE_STUDY,
            "Rows": 8, "Columns": 8}
    files += [ct_instance(InstanceNumber=n, **hole) for n in (1, 2)]
    compressed = {"PatientID": "P-J2K", "PatientName": "Codec^Case",
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
def site(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    as_published()
    root = tmp_path_factory.mktemp("published")
    destination = dcmtk.Storescp(root / "dest").start()
    plain = dcmtk.Storescp(root / "plain", ae_title="PLAIN", accept_all=False).start()
    index = Index(module_database_url)
    index.upgrade()
    audit = AuditTrail(index=index, flush_interval_s=0.05)
    blobs = FileStore(root / "data")
    registry = AeRegistry(index=index)
    # as --peer and --modality register them
    registry.sync_flags([Destination("DEST", "127.0.0.1", destination.port),
                         Destination("PLAIN", "127.0.0.1", plain.port),
                         Destination("DEAD", "127.0.0.1", free_port())], ["STORESCU", "CT1"])
    for title, allowed in (("FINDSCU", "find"), ("MOVESCU", "move"), ("GETSCU", "get")):
        registry.add(title, hosts=["127.0.0.1"], allow=[allowed])
    ingest = IngestService(blobs=blobs, index=index)
    query = QueryService(index=index, audit=audit)
    retrieve = RetrieveService(query=query, blobs=blobs, destinations=registry,
                               audit=audit.record)
    access = AccessControl(registry=registry, ae_title="PACS",
                           refusals=RefusalAudit(audit.refusal))
    handlers = DimseHandlers(ingest, InFlight(), access=access)
    published = PublishedQueryRetrieve(QueryRetrieveServices(query, retrieve, "PACS", True,
                                                             access))
    ae = AE(ae_title="PACS")
    server: Any = None
    try:
        with pytest.MonkeyPatch.context() as patch:
            # as the composition root sets them (documented pynetdicom and pydicom options)
            patch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
            patch.setattr(tempfile, "tempdir", str(ingest.temp_dir()))
            patch.setattr(pydicom.config.settings, "reading_validation_mode",
                          pydicom.config.IGNORE)
            server = ae.start_server(("127.0.0.1", 0), block=False, contexts=scp_contexts(),
                                     evt_handlers=[
                                         (evt.EVT_REQUESTED, access.before(lambda event: None)),
                                         (evt.EVT_C_ECHO, handlers.on_echo),
                                         (evt.EVT_C_STORE, handlers.on_store),
                                         *published.bindings()])
            port = int(server.server_address[1])
            files = _population(root / "files")
            stored = dcmtk.storescu(port, files, workdir=root)
            assert dcmtk.successes(stored) == len(files), dcmtk.status_lines(stored)
            sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                    for f in files}
            yield Site(port, index, audit, blobs, query, destination, plain, root, sent)
    finally:
        if server is not None:
            server.shutdown()
        audit.close()
        index.dispose()
        destination.stop()
        plain.stop()
    as_published()


@pytest.fixture(scope="module")
def fast(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    """``pacs serve`` (the fast path, another process) with the files ``site`` stored, in the
    same order: the same rows in the same order."""
    root = tmp_path_factory.mktemp("fast")
    server = PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root / 'index.sqlite'}")
    try:
        server.start()
        files = list(site.sent.values())
        stored = dcmtk.storescu(server.dimse_port, files, workdir=root)
        assert dcmtk.successes(stored) == len(files), dcmtk.status_lines(stored)
        yield server
    finally:
        server.stop()


def _text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _statuses(result: subprocess.CompletedProcess[str]) -> list[int]:
    """The Status (0000,0900) of every response DCMTK printed (-d)."""
    return [int(value, 16) for value in
            re.findall(r"DIMSE Status\s*: 0x([0-9A-Fa-f]{4})", _text(result))]


def _comments(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The Error Comments (0000,0902) of the responses DCMTK printed (-d)."""
    return [comment.rstrip() for comment in
            re.findall(r"\(0000,0902\) LO \[([^\]]*)\]", _text(result))]


def _final(result: subprocess.CompletedProcess[str], service: str) -> str:
    text = _text(result)
    assert f"Received Final {service} Response" in text, text
    return text.split(f"Received Final {service} Response")[1]


def _dataset_bytes_by_uid(files: list[Path]) -> dict[str, bytes]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID):
            comparable(path.read_bytes()) for path in files}


def _series_uid(site: Site, number: int) -> str:
    found = site.find("SERIES", f"StudyInstanceUID={BIG_STUDY}", "SeriesInstanceUID",
                      f"SeriesNumber={number}")
    assert len(found) == 1
    return str(found[0].SeriesInstanceUID)


def test_served_by_pynetdicoms_own_service_classes(site: Site) -> None:
    as_published()
    assert dcmtk.echoscu(site.port, extra=("-aet", "FINDSCU")).returncode == 0


# -- C-FIND ----------------------------------------------------------------------------------


def test_find_matches_and_returns_every_requested_key(site: Site) -> None:
    result, found = dcmtk.findscu(
        site.port, ["QueryRetrieveLevel=STUDY", "PatientName=doe*", "PatientID",
                    "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "RetrieveAETitle",
                    "ReferringPhysicianName"], workdir=site.workdir)
    assert sorted(str(r.PatientName) for r in found) == ["DOE^JANE", "Doe^John"]
    assert _text(result).count("(Pending)") == 2  # one pending response per match
    john = next(r for r in found if r.PatientID == "P-DOE-1")
    assert int(john.NumberOfStudyRelatedInstances) == 3
    assert list(john.ModalitiesInStudy) == ["CT", "MR"]
    assert john.RetrieveAETitle == "PACS"
    assert john.QueryRetrieveLevel == "STUDY"
    assert "ReferringPhysicianName" in john and john.ReferringPhysicianName == ""
    assert "SpecificCharacterSet" not in john  # not asked for, not needed


def test_find_series_level_and_patient_root(site: Site) -> None:
    series = site.find("SERIES", f"StudyInstanceUID={BIG_STUDY}", "SeriesNumber",
                       "NumberOfSeriesRelatedInstances")
    assert sorted(int(s.SeriesNumber) for s in series) == [1, 2]
    assert {int(s.NumberOfSeriesRelatedInstances) for s in series} == {30}
    patients = site.find("PATIENT", "PatientID=P-DOE-1", "PatientName",
                         "NumberOfPatientRelatedInstances", model="-P")
    assert [(str(p.PatientName), int(p.NumberOfPatientRelatedInstances))
            for p in patients] == [("Doe^John", 3)]


def test_find_answers_non_ascii_in_utf8(site: Site) -> None:
    found = site.find("STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=müller*",
                      "StudyDescription")
    assert len(found) == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == "MÜLLER^JÜRGEN"
    assert found[0].StudyDescription == "CT SCHÄDEL NATIV"


@pytest.mark.parametrize(
    ("keys", "model", "status"),
    [
        (["QueryRetrieveLevel=SERIES", "SeriesInstanceUID"], "-S", 0xA900),
        (["QueryRetrieveLevel=PATIENT", "PatientID"], "-S", 0xA900),
        (["QueryRetrieveLevel=STUDY", "StudyDate=2024-01-01"], "-S", 0xC000),
    ],
)
def test_find_refuses_a_bad_identifier_with_a_comment(
    site: Site, keys: list[str], model: str, status: int
) -> None:
    result, responses = dcmtk.findscu(site.port, keys, workdir=site.workdir, model=model,
                                      extra=("-d",))
    assert responses == []
    assert _statuses(result) == [status], _text(result)
    assert len(_comments(result)) == 1 and _comments(result)[0], _text(result)
    refused = [e for e in site.audit_events("query") if e.outcome == "refused"]
    assert any(e.actor == "dimse:FINDSCU@127.0.0.1" for e in refused)


@pytest.mark.parametrize(
    ("keys", "model"),
    [
        (["QueryRetrieveLevel=STUDY", "PatientName=doe*", "SpecificCharacterSet", "PatientID",
          "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
          "ReferringPhysicianName", "ModalitiesInStudy", "SOPClassesInStudy",
          "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "RetrieveAETitle",
          "InstanceAvailability", "StudyInstanceUID"], "-S"),
        (["QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=*ller*",
          "StudyDescription", "ReferringPhysicianName"], "-S"),
        (["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={BIG_STUDY}", "SeriesInstanceUID",
          "SeriesNumber", "Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances",
          "RequestAttributesSequence"], "-S"),
        (["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={DOE_STUDY}",
          "SeriesInstanceUID={ct series}", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
         "-S"),
        (["QueryRetrieveLevel=PATIENT", "PatientID=P-*", "PatientName", "PatientSex",
          "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
          "NumberOfPatientRelatedInstances"], "-P"),
    ],
    ids=["study", "non-ascii", "series", "image", "patient-root"],
)
def test_find_answers_as_the_fast_path_does(
    site: Site, fast: PacsServer, keys: list[str], model: str
) -> None:
    series = site.find("SERIES", f"StudyInstanceUID={DOE_STUDY}", "SeriesInstanceUID",
                       "Modality=CT")
    keys = [key.replace("{ct series}", str(series[0].SeriesInstanceUID)) for key in keys]
    ours_result, ours = dcmtk.findscu(site.port, keys, workdir=site.workdir, model=model)
    theirs_result, theirs = dcmtk.findscu(fast.dimse_port, keys, workdir=site.workdir,
                                          model=model)
    assert theirs, dcmtk.status_lines(theirs_result)
    assert [_elements(r) for r in ours] == [_elements(r) for r in theirs]
    assert _text(ours_result).count("(Pending)") == _text(theirs_result).count("(Pending)")


def _elements(identifier: Dataset) -> list[tuple[Any, str, Any]]:
    return [(element.tag, element.VR, element.value) for element in identifier]


def test_find_cancel_stops_the_pending_responses(site: Site) -> None:
    index_datasets(site.index, [ct_instance(PatientID=f"MANY-{n:04d}", PatientName=f"Many^{n}",
                                            Rows=2, Columns=2) for n in range(1500)])
    result, responses = dcmtk.findscu(
        site.port, ["QueryRetrieveLevel=STUDY", "PatientID=MANY-*"], workdir=site.workdir,
        extra=("--cancel", "5"))
    text = _text(result)
    assert result.returncode == 0, text
    assert "Received Final Find Response (Cancel" in text, text
    assert 5 <= len(responses) < 1000, text


# -- C-MOVE ----------------------------------------------------------------------------------


def test_move_study_delivers_byte_identical_data_sets_and_is_audited(site: Site) -> None:
    site.destination.clear()
    result = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                       f"StudyInstanceUID={BIG_STUDY}"], destination="DEST")
    assert "Final Move Response (Success)" in _text(result), _text(result)
    received = _dataset_bytes_by_uid(site.destination.files())
    assert len(received) == 60
    for uid, data in received.items():
        assert data == comparable(site.sent[uid].read_bytes()), uid
    events = [e for e in site.audit_events("retrieve")
              if e.study_instance_uid == BIG_STUDY and e.detail.get("how") == "C-MOVE to DEST"]
    assert events, "no retrieve event"
    assert events[0].actor == "dimse:MOVESCU@127.0.0.1"
    assert events[0].outcome == "60 completed, 0 failed, 0 warning"
    assert events[0].detail["status"] == "0x0000"


def test_move_sends_compressed_instances_as_stored(site: Site) -> None:
    site.destination.clear()
    result = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                       f"StudyInstanceUID={J2K_STUDY}"], destination="DEST")
    assert "Final Move Response (Success)" in _text(result), _text(result)
    received = _dataset_bytes_by_uid(site.destination.files())
    assert len(received) == 4
    for uid, data in received.items():
        assert data == comparable(site.sent[uid].read_bytes()), uid


def test_move_decompresses_for_a_destination_accepting_uncompressed_only(site: Site) -> None:
    site.plain.clear()
    result = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                       f"StudyInstanceUID={J2K_STUDY}"], destination="PLAIN")
    assert "Final Move Response (Success)" in _text(result), _text(result)
    files = site.plain.files()
    assert len(files) == 4
    for path in files:
        received = pydicom.dcmread(path)
        original = pydicom.dcmread(site.sent[str(received.SOPInstanceUID)])
        assert original.file_meta.TransferSyntaxUID.is_compressed
        assert not received.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(received.pixel_array, original.pixel_array)


def test_move_series_with_pending_counts(site: Site) -> None:
    site.destination.clear()
    result = dcmtk.movescu(
        site.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={BIG_STUDY}",
                    f"SeriesInstanceUID={_series_uid(site, 2)}"],
        destination="DEST", extra=("-d",))
    text = _text(result)
    assert len(site.destination.files()) == 30
    assert "Remaining Suboperations       : 29" in text, text
    final = _final(result, "Move")
    assert "DIMSE Status                  : 0x0000" in final, final
    assert "Completed Suboperations       : 30" in final, final
    assert "Failed Suboperations          : 0" in final, final


def test_move_cancel_stops_the_sub_operations(site: Site) -> None:
    site.destination.clear()
    result = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                       f"StudyInstanceUID={BIG_STUDY}"],
                           destination="DEST", extra=("--cancel", "3"))
    assert "Received Final Move Response (Cancel" in _text(result), _text(result)
    assert 3 <= len(site.destination.files()) < 60
    events = [e for e in site.audit_events("retrieve") if e.study_instance_uid == BIG_STUDY]
    assert events[0].detail["status"] == "0xFE00 cancelled"
    assert events[0].detail["not_attempted"] > 0


def test_move_to_an_unknown_destination_is_a801(site: Site) -> None:
    result = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                       f"StudyInstanceUID={DOE_STUDY}"],
                           destination="NOBODY", extra=("-d",))
    assert _statuses(result) == [0xA801], _text(result)
    refused = [e for e in site.audit_events("retrieve") if e.outcome == "refused"
               and e.detail["how"] == "C-MOVE to NOBODY"]
    assert refused and refused[0].detail["status"] == "0xA801"


# pynetdicom 3.0 leaves the socket of a refused connection to the garbage collector: its
# AssociationSocket._shutdown_socket shuts the unconnected socket down, which raises, before
# it would close it
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_move_to_a_destination_that_is_down_is_a801_and_audited_why(site: Site) -> None:
    """pynetdicom answers 0xA801 itself (the fast path: 0xA702 with a comment)."""
    result = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                       f"StudyInstanceUID={DOE_STUDY}"],
                           destination="DEAD", extra=("-d",))
    assert _statuses(result) == [0xA801], _text(result)
    refused = [e for e in site.audit_events("retrieve") if e.outcome == "refused"
               and e.detail["how"] == "C-MOVE to DEAD"]
    assert refused and refused[0].detail["reason"] == "cannot associate with DEAD"
    assert refused[0].study_instance_uid == DOE_STUDY
    assert dcmtk.echoscu(site.port, extra=("-aet", "FINDSCU")).returncode == 0  # still serving


def test_move_with_a_file_missing_fails_that_sub_operation_only(site: Site) -> None:
    first, second = site.instances(HOLE_STUDY)
    site.blobs.local_path(second.blob_key).unlink()
    site.destination.clear()
    some = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                     f"StudyInstanceUID={HOLE_STUDY}"],
                         destination="DEST", extra=("-d",))
    final = _final(some, "Move")
    assert "DIMSE Status                  : 0xb000" in final, final
    assert "Completed Suboperations       : 1" in final, final
    assert "Failed Suboperations          : 1" in final, final
    # the Failed SOP Instance UID List
    assert f"(0008,0058) UI [{second.sop_instance_uid}" in final, final
    assert _dataset_bytes_by_uid(site.destination.files()) == {
        first.sop_instance_uid: comparable(site.sent[first.sop_instance_uid].read_bytes())}

    only = dcmtk.movescu(site.port, [
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={HOLE_STUDY}",
        f"SeriesInstanceUID={second.series_instance_uid}",
        f"SOPInstanceUID={second.sop_instance_uid}"], destination="DEST", extra=("-d",))
    assert "DIMSE Status                  : 0xa702" in _final(only, "Move"), _text(only)
    events = [e for e in site.audit_events("retrieve") if e.study_instance_uid == HOLE_STUDY]
    assert [(e.outcome, e.detail["status"]) for e in events[:2]] == [
        ("0 completed, 1 failed, 0 warning", "0xA702"),
        ("1 completed, 1 failed, 0 warning", "0xB000")]


# -- C-GET -----------------------------------------------------------------------------------


def test_get_series_delivers_byte_identical_data_sets(site: Site) -> None:
    output = site.workdir / "get-series"
    result = dcmtk.getscu(
        site.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={BIG_STUDY}",
                    f"SeriesInstanceUID={_series_uid(site, 1)}"], output=output)
    assert result.returncode == 0, _text(result)
    received = _dataset_bytes_by_uid(sorted(output.iterdir()))
    assert len(received) == 30
    for uid, data in received.items():
        assert data == comparable(site.sent[uid].read_bytes()), uid
    events = [e for e in site.audit_events("retrieve") if e.detail.get("how") == "C-GET"]
    assert events[0].outcome == "30 completed, 0 failed, 0 warning"


def test_get_decompresses_what_getscu_does_not_accept(site: Site) -> None:
    output = site.workdir / "get-j2k"
    result = dcmtk.getscu(site.port, ["QueryRetrieveLevel=STUDY",
                                      f"StudyInstanceUID={J2K_STUDY}"], output=output)
    assert result.returncode == 0, _text(result)
    files = sorted(output.iterdir())
    assert len(files) == 4
    for path in files:
        received = pydicom.dcmread(path)
        original = pydicom.dcmread(site.sent[str(received.SOPInstanceUID)])
        assert np.array_equal(received.pixel_array, original.pixel_array)


# -- access control --------------------------------------------------------------------------


def test_an_ae_that_may_only_store_is_refused_find_move_and_get(site: Site) -> None:
    found, responses = dcmtk.findscu(site.port, ["QueryRetrieveLevel=STUDY",
                                                 f"StudyInstanceUID={DOE_STUDY}"],
                                     workdir=site.workdir, extra=("-d", "-aet", "CT1"))
    assert _statuses(found) == [0xC124] and responses == [], _text(found)
    assert _comments(found) == ["calling AE 'CT1' may not C-FIND"]

    site.destination.clear()
    moved = dcmtk.movescu(site.port, ["QueryRetrieveLevel=STUDY",
                                      f"StudyInstanceUID={DOE_STUDY}"],
                          destination="DEST", extra=("-d", "-aet", "CT1"))
    assert _statuses(moved) == [0xC124], _text(moved)
    assert _comments(moved) == ["calling AE 'CT1' may not C-MOVE"]
    assert site.destination.files() == []

    output = site.workdir / "get-denied"
    got = dcmtk.getscu(site.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={DOE_STUDY}"],
                       output=output, extra=("-d", "-aet", "CT1"))
    assert _statuses(got) == [0xC124], _text(got)
    assert _comments(got) == ["calling AE 'CT1' may not C-GET"]
    assert list(output.iterdir()) == []
    assert "Received C-STORE Request" not in _text(got)

    def denials() -> set[str]:
        return {e.outcome for e in site.audit_events("permission-denied")
                if e.actor == "dimse:CT1@127.0.0.1"}

    until("the denials are audited",
          lambda: denials() == {"may not C-FIND", "may not C-MOVE", "may not C-GET"})
