"""Modality Worklist C-FIND SCP (PS3.4 K.6) against DCMTK ``findscu -W`` and a pynetdicom SCU.

One real ``pacs serve`` per database backend, with DIMSE access control (``--dimse-access
registered``) and a worker process (associations handed off round robin, so both processes
answer), its worklist filled by the order factory (``tests/factories/worklist.py``). Runs on
either DIMSE transport (``PACS_DIMSE_TRANSPORT=stock``: ``make test-stock``).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from tests.factories.worklist import Order, Step, schedule_at
from tests.support import dcmtk
from tests.support.server import PacsServer
from tests.support.wait import until

SPS = "(0040,0100)[0]"  # the Scheduled Procedure Step Sequence's item, as findscu -k names it
BULK_STEPS = 300
CAP = 250  # PACS_MAX_QUERY_RESULTS of the server: fewer than the bulk station's steps

ORDERS = [
    Order("P-DOE-1", "Doe^John", accession_number="ACC-1", requested_procedure_id="RP-1",
          requested_procedure_description="CT head", patient_birth_date="19700101",
          patient_sex="M", issuer_of_patient_id="HOSP",
          steps=(Step("S1", "CT1", "CT ROOM 1", "CT", "20261207", "080000", "CT head plain"),
                 Step("S2", "CT1", "CT ROOM 1", "CT", "20261207", "140000", "CT head contrast"))),
    Order("P-DOE-2", "DOE^JANE", accession_number="ACC-2",
          steps=(Step("S1", "MR1", "MR ROOM", "MR", "20261208", "090000", "MR knee"),)),
    Order("P-MUE", "Müller^Jürgen", accession_number="ACC-3",
          steps=(Step("S1", "US1", "US ROOM", "US", "20261206", "110000", "US abdomen"),)),
    Order("50%_OFF", "50%_Off^Anna", accession_number="ACC-4",
          steps=(Step("S1", "CT2", "CT ROOM 2", "CT", "20261210", "100000"),)),
    Order("50XXOFF", "50XXOff^Bob", accession_number="ACC-5",
          steps=(Step("S1", "CT2", "CT ROOM 2", "CT", "20261211", "100000"),)),
    Order("P-DONE", "Done^Dora", accession_number="ACC-6",
          steps=(Step("S1", "CT1", start_date="20261207", status="COMPLETED"),
                 Step("S2", "CT1", start_date="20261207", status="CANCELED"))),
    Order("P-CANC", "Cancelled^Carl", accession_number="ACC-7", status="cancelled",
          steps=(Step("S1", "CT1", start_date="20261207"),)),
    Order("P-BULK", "Bulk^Betty", accession_number="ACC-BULK",
          steps=tuple(Step(f"B{n:03d}", "BULK", modality="OT", start_date="20270101",
                           start_time=f"{n // 60:02d}{n % 60:02d}00")
                      for n in range(BULK_STEPS))),
]

REQUIRED_TOP = ("AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
                "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                "RequestedProcedureID", "RequestedProcedureDescription")
REQUIRED_STEP = ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                 "ScheduledProcedureStepStartTime", "Modality", "ScheduledPerformingPhysicianName",
                 "ScheduledProcedureStepDescription", "ScheduledStationName",
                 "ScheduledProcedureStepID", "ScheduledProcedureStepStatus")


@dataclass
class Site:
    server: PacsServer
    root: Path

    @property
    def port(self) -> int:
        return self.server.dimse_port

    def find(self, *keys: str, aet: str = "CT1", extra: tuple[str, ...] = ()
             ) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
        """``findscu -W`` (``-d``: every response's status printed); its responses, in order."""
        out = Path(tempfile.mkdtemp(prefix="mwl-", dir=self.root))
        args = ["-d", "-W", "-aet", aet, "-aec", "PACS", "-X", "-od", str(out), *extra]
        for key in keys:
            args += ["-k", key]
        result = dcmtk.run("findscu", *args, "127.0.0.1", str(self.port))
        return result, [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]

    def items(self, *keys: str, aet: str = "CT1") -> list[Dataset]:
        result, responses = self.find(*keys, aet=aet)
        assert result.returncode == 0, _text(result)
        assert statuses(result)[-1] == 0x0000, _text(result)
        return responses

    def audit(self) -> list[Any]:
        with self.server.services() as services:
            return services.workflow.audit_events(action="query", limit=500)


def _text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def statuses(result: subprocess.CompletedProcess[str]) -> list[int]:
    """The Status (0000,0900) of every response findscu printed (-d)."""
    return [int(value, 16) for value in
            re.findall(r"DIMSE Status\s*: 0x([0-9A-Fa-f]{4})", _text(result))]


def comments(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The Error Comments (0000,0902) of the responses findscu printed (-d)."""
    return [comment.rstrip() for comment in
            re.findall(r"\(0000,0902\) LO \[([^\]]*)\]", _text(result))]


def step(response: Dataset) -> Dataset:
    """The response's one Scheduled Procedure Step Sequence item."""
    [item] = response.ScheduledProcedureStepSequence
    return item


def ids(responses: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(r.PatientID), str(step(r).ScheduledProcedureStepID)) for r in responses]


@pytest.fixture(scope="module")
def site(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("mwl")
    server = PacsServer(
        data_dir=root / "data", database_url=module_database_url,
        extra_args=["--dimse-access", "registered", "--dimse-processes", "2"],
        start_env={"PACS_MAX_QUERY_RESULTS": str(CAP)},
    )
    for args in (["CT1", "--allow", "find,store"], ["MR1", "--allow", "find"],
                 ["PYSCU", "--allow", "find"], ["STORER", "--allow", "store"]):
        added = server.cli("ae", "add", *args, "--host", "127.0.0.1")
        assert added.returncode == 0, added.stderr
    try:
        server.start()
        schedule_at(module_database_url, ORDERS)
        yield Site(server, root)
    finally:
        server.stop()


# -- matching (PS3.4 K.6.1.2, the matching rules of C.2.2.2) -------------------------------


def test_station_ae_title_in_the_step_item_matches_and_type_1_keys_are_filled(
        site: Site) -> None:
    responses = site.items(f"{SPS}.ScheduledStationAETitle=CT1", "PatientName")
    assert ids(responses) == [("P-DOE-1", "S1"), ("P-DOE-1", "S2")]  # in scheduled order
    first = responses[0]
    for keyword in REQUIRED_TOP:
        assert keyword in first, keyword
    for keyword in REQUIRED_STEP:
        assert keyword in step(first), keyword
    assert (first.PatientName, first.PatientID, first.IssuerOfPatientID) == (
        "Doe^John", "P-DOE-1", "HOSP")
    assert (first.AccessionNumber, first.RequestedProcedureID) == ("ACC-1", "RP-1")
    assert first.RequestedProcedureDescription == "CT head"
    assert first.StudyInstanceUID == ORDERS[0].study_uid
    assert (first.PatientBirthDate, first.PatientSex) == ("19700101", "M")
    item = step(first)
    assert (item.ScheduledStationAETitle, item.ScheduledStationName, item.Modality) == (
        "CT1", "CT ROOM 1", "CT")
    assert (item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == (
        "20261207", "080000")
    assert item.ScheduledProcedureStepDescription == "CT head plain"
    assert item.ScheduledProcedureStepStatus == "SCHEDULED"
    assert item.ScheduledPerformingPhysicianName == ""  # Type 2, not known: present, empty


def test_modality_and_a_key_at_the_top_level(site: Site) -> None:
    assert ids(site.items(f"{SPS}.Modality=MR")) == [("P-DOE-2", "S1")]
    # a step key given at the top level (some SCUs flatten the sequence) matches too
    assert ids(site.items("Modality=US")) == [("P-MUE", "S1")]


@pytest.mark.parametrize(("value", "expected"), [
    ("20261207", [("P-DOE-1", "S1"), ("P-DOE-1", "S2")]),
    ("20261207-20261208", [("P-DOE-1", "S1"), ("P-DOE-1", "S2"), ("P-DOE-2", "S1")]),
    ("-20261206", [("P-MUE", "S1")]),
    ("20261210-20261231", [("50%_OFF", "S1"), ("50XXOFF", "S1")]),
])
def test_start_date_single_value_and_ranges(site: Site, value: str,
                                            expected: list[tuple[str, str]]) -> None:
    assert ids(site.items(f"{SPS}.ScheduledProcedureStepStartDate={value}")) == expected


def test_open_ended_date_range_with_a_time_range(site: Site) -> None:
    found = site.items(f"{SPS}.ScheduledProcedureStepStartDate=20261207-",
                       f"{SPS}.ScheduledProcedureStepStartTime=1200-",
                       f"{SPS}.ScheduledStationAETitle=CT1")
    assert ids(found) == [("P-DOE-1", "S2")]


def test_patient_name_wildcard_ignores_case_and_accents(site: Site) -> None:
    assert ids(site.items("PatientName=doe*")) == [("P-DOE-1", "S1"), ("P-DOE-1", "S2"),
                                                   ("P-DOE-2", "S1")]
    found = site.items("PatientName=MULLER*", "SpecificCharacterSet")
    assert ids(found) == [("P-MUE", "S1")]
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert found[0].PatientName == "Müller^Jürgen"


def test_percent_and_underscore_in_data_are_literal(site: Site) -> None:
    assert ids(site.items("PatientName=50%_*")) == [("50%_OFF", "S1")]
    assert ids(site.items("PatientID=50??OFF")) == [("50%_OFF", "S1"), ("50XXOFF", "S1")]


def test_patient_id_and_accession_number(site: Site) -> None:
    assert ids(site.items("PatientID=P-DOE-2")) == [("P-DOE-2", "S1")]
    assert ids(site.items("AccessionNumber=ACC-1", f"{SPS}.ScheduledProcedureStepID=S2")) == [
        ("P-DOE-1", "S2")]


def test_completed_and_cancelled_steps_are_not_offered(site: Site) -> None:
    assert site.items("PatientID=P-DONE") == []
    assert site.items("PatientID=P-CANC") == []  # its order was cancelled
    # unless the status is asked for
    asked = site.items("PatientID=P-DONE", f"{SPS}.ScheduledProcedureStepStatus=COMPLETED")
    assert ids(asked) == [("P-DONE", "S1")]


def test_requested_type_2_keys_are_returned_empty(site: Site) -> None:
    [response] = site.items("AccessionNumber=ACC-2", "RequestingPhysician", "AdmissionID",
                            "(0032,1064)", f"{SPS}.ScheduledProtocolCodeSequence",
                            "QueryRetrieveLevel")
    assert response.RequestingPhysician == "" and response.AdmissionID == ""
    assert response.RequestedProcedureCodeSequence == []
    assert step(response).ScheduledProtocolCodeSequence == []
    assert "SpecificCharacterSet" not in response  # nothing but ASCII, and not asked
    assert "QueryRetrieveLevel" not in response  # no levels in the worklist model


# -- refusals, errors, cancel --------------------------------------------------------------


def test_an_ae_without_find_permission_is_refused(site: Site) -> None:
    result, responses = site.find("PatientID=P-DOE-1", aet="STORER")
    assert statuses(result) == [0xC124] and responses == []
    assert comments(result) == ["calling AE 'STORER' may not C-FIND"]


def test_a_malformed_identifier_is_answered_with_an_error_and_the_server_goes_on(
        site: Site) -> None:
    bad_date, responses = site.find(f"{SPS}.ScheduledProcedureStepStartDate=2026-12-07-01")
    assert statuses(bad_date) == [0xC000] and responses == []
    [comment] = comments(bad_date)
    assert comment.startswith("ScheduledProcedureStepStartDate")
    out_of_place, _ = site.find(f"{SPS}.PatientName=Doe*")
    assert statuses(out_of_place) == [0xA900]
    assert comments(out_of_place) == ["PatientName belongs at the top level, not in the step item"]
    assert ids(site.items("PatientID=P-DOE-2")) == [("P-DOE-2", "S1")]


def test_cancel_stops_the_items_and_the_cap_ends_them(site: Site) -> None:
    result, responses = site.find(f"{SPS}.ScheduledStationAETitle=BULK",
                                  extra=("--cancel", "5"))
    text = _text(result)
    assert result.returncode == 0, text
    assert statuses(result)[-1] == 0xFE00, text  # Cancel: matching terminated
    assert 5 <= len(responses) < BULK_STEPS
    # without it, the station's steps come in scheduled order, as many as the cap allows
    everything = site.items(f"{SPS}.ScheduledStationAETitle=BULK")
    assert [step(r).ScheduledProcedureStepID for r in everything] == [
        f"B{n:03d}" for n in range(CAP)]
    assert f"worklist result capped at {CAP}" in site.server.log()


def test_queries_are_audited(site: Site) -> None:
    site.items("AccessionNumber=ACC-5", aet="MR1")

    def audited() -> list[Any]:
        return [event for event in site.audit() if event.actor.startswith("dimse:MR1@")
                and event.detail.get("level") == "WORKLIST"]

    [event] = until("the worklist query is audited", audited)
    assert event.outcome == "1 matches"
    assert event.detail["keys"] == {"AccessionNumber": "ACC-5"}


# -- pynetdicom as the SCU -----------------------------------------------------------------


def _pynetdicom_find(port: int, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        return [(int(status.Status), found)
                for status, found in assoc.send_c_find(identifier,
                                                       ModalityWorklistInformationFind)]
    finally:
        assoc.release()


def test_pynetdicom_scu_with_the_step_sequence(site: Site) -> None:
    identifier = Dataset()
    identifier.PatientName = ""
    identifier.PatientID = ""
    item = Dataset()
    item.ScheduledStationAETitle = "CT2"
    item.Modality = "CT"
    item.ScheduledProcedureStepStartDate = "20261201-20261210"
    item.ScheduledProcedureStepStartTime = ""
    identifier.ScheduledProcedureStepSequence = [item]
    answers = _pynetdicom_find(site.port, identifier)
    assert [status for status, _ in answers] == [0xFF00, 0x0000]
    found = answers[0][1]
    assert found is not None
    assert (found.PatientID, found.PatientName) == ("50%_OFF", "50%_Off^Anna")
    assert step(found).ScheduledProcedureStepStartTime == "100000"


def test_pynetdicom_scu_an_unsupported_optional_key_is_pending_ff01(site: Site) -> None:
    identifier = Dataset()
    identifier.PatientID = "P-DOE-2"
    identifier.PatientWeight = "70"  # not matched on: the items come with a warning
    answers = _pynetdicom_find(site.port, identifier)
    assert [status for status, _ in answers] == [0xFF01, 0x0000]
    found = answers[0][1]
    assert found is not None and found.PatientID == "P-DOE-2"
    assert found.PatientWeight is None or found.PatientWeight == ""  # returned, empty


def test_the_listening_process_and_its_worker_both_answer(site: Site) -> None:
    for _ in range(4):  # round robin: two associations each
        assert ids(site.items("AccessionNumber=ACC-4")) == [("50%_OFF", "S1")]
    answering = set(re.findall(r"\[pid (\d+)\] pacs\.dimse\.worklist: worklist C-FIND from CT1",
                               site.server.log()))
    assert len(answering) == 2
