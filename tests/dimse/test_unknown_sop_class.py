"""Storage SOP classes pynetdicom does not list, against a real ``pacs serve`` (issue 12, 14).

Retired Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6) and a private class are stored by
C-STORE when the requestor proposes them (``accept_unknown_sop_classes``, on by default, as
Orthanc's ``UnknownSopClassAccepted``), and C-GET and C-MOVE send them back unchanged. With the
setting off, C-STORE of them is refused as before, while C-GET still returns those that came
in another way. A destination that refuses the class is named in the log with the real cause.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, build_role, evt

from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support.files import dataset_bytes
from tests.support.server import PacsServer
from tests.support.wait import until

pytestmark = pytest.mark.fast_transport(
    "its published service classes serve C-STORE only for the SOP classes pynetdicom lists")

RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (retired 1993)
PRIVATE = f.UID_ROOT + "77.1"  # a private storage class under pydicom's test root
STUDY = f.make_uid("unknown-sop-class", "study")
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


@dataclass
class Setup:
    server: PacsServer
    promiscuous: dcmtk.Storescp  # accepts any SOP class (-pm)
    strict: dcmtk.Storescp  # accepts the SOP classes DCMTK knows only
    files: dict[str, Path]  # SOP Instance UID → file sent
    workdir: Path


def instances(folder: Path, study: str = STUDY) -> dict[str, Path]:
    same = {"PatientID": "P-UNK", "PatientName": "UNKNOWN^CLASS", "StudyDate": "20240501",
            "AccessionNumber": "ACC-UNK", "StudyInstanceUID": study}
    retired = f.us_instance(SOPClassUID=RETIRED_US, SeriesNumber=1, **same)
    private = f.sc_instance(SOPClassUID=PRIVATE, SeriesNumber=2, **same)
    return {str(ds.SOPInstanceUID): f.write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm")
            for ds in (retired, private)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("unknown-sop")
    promiscuous = dcmtk.Storescp(root / "dest", ae_title="DEST", promiscuous=True).start()
    strict = dcmtk.Storescp(root / "strict", ae_title="STRICT").start()
    server = PacsServer(data_dir=root / "data", database_url=f"sqlite:///{root}/index.sqlite",
                        extra_args=["--peer", promiscuous.peer, "--peer", strict.peer])
    try:
        server.start()
        files = instances(root / "sent")
        result = dcmtk.storescu(server.dimse_port, list(files.values()), workdir=root)
        assert dcmtk.successes(result) == 2, dcmtk.status_lines(result)
        yield Setup(server, promiscuous, strict, files, root)
    finally:
        server.stop()
        promiscuous.stop()
        strict.stop()


def c_get(port: int, study: str, classes: list[str]) -> tuple[list[int], dict[str, bytes]]:
    """C-GET of ``study`` by a pynetdicom requestor proposing ``classes`` with the SCP role;
    the final statuses and the data sets received (SOP Instance UID → bytes as sent)."""
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(
            include_meta=False)
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(STUDY_ROOT_GET)
    for sop_class in classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS",
                         ext_neg=[build_role(c, scp_role=True) for c in classes],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    statuses = [int(status.Status) for status, _ in
                assoc.send_c_get(identifier, STUDY_ROOT_GET)
                if status]
    assoc.release()
    return statuses, received


def log_text(server: PacsServer) -> str:
    assert server.log_path is not None
    return server.log_path.read_text(errors="replace")


def test_storescu_stores_retired_and_private_classes(setup: Setup) -> None:
    stored = sorted((setup.server.data_dir / "objects").glob("*/*"))
    classes = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in stored}
    assert classes == {RETIRED_US, PRIVATE}


def test_c_get_proposing_the_classes_receives_them_byte_identical(setup: Setup) -> None:
    statuses, received = c_get(setup.server.dimse_port, STUDY, [RETIRED_US, PRIVATE])

    assert statuses[-1] == 0x0000
    assert received == {uid: dataset_bytes(p.read_bytes()) for uid, p in setup.files.items()}


def test_getscu_retrieves_the_retired_class_dcmtk_knows(setup: Setup) -> None:
    out = setup.workdir / "getscu"
    retired_uid = next(uid for uid, p in setup.files.items()
                       if pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == RETIRED_US)
    result = dcmtk.getscu(setup.server.dimse_port,
                          ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={STUDY}",
                           f"SOPInstanceUID={retired_uid}"], output=out)

    assert result.returncode == 0, dcmtk.status_lines(result)
    got = sorted(p for p in out.iterdir() if p.is_file())
    assert len(got) == 1
    sent = setup.files[retired_uid]
    assert dataset_bytes(got[0].read_bytes()) == dataset_bytes(sent.read_bytes())


def test_c_move_to_a_promiscuous_storescp_delivers_them(setup: Setup) -> None:
    setup.promiscuous.clear()
    result = dcmtk.movescu(setup.server.dimse_port,
                           ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"],
                           destination="DEST")

    assert result.returncode == 0, dcmtk.status_lines(result)
    delivered = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID):
                 dataset_bytes(p.read_bytes()) for p in setup.promiscuous.files()}
    assert delivered == {uid: dataset_bytes(p.read_bytes()) for uid, p in setup.files.items()}


def test_a_destination_that_refuses_the_class_is_named_in_the_log(setup: Setup) -> None:
    result = dcmtk.movescu(setup.server.dimse_port,
                           ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"],
                           destination="STRICT")

    assert "Failed" in dcmtk.status_lines(result) or result.returncode != 0
    log = log_text(setup.server)
    assert (f"STRICT accepted no presentation context for SOP class {PRIVATE} "
            "(private SOP class) (abstract syntax not supported)") in log
    assert "nor an uncompressed one" not in log  # not blamed on the transfer syntax


def test_a_c_get_requestor_that_does_not_propose_the_class_is_named_in_the_log(
    setup: Setup
) -> None:
    statuses, received = c_get(setup.server.dimse_port, STUDY, [RETIRED_US])

    assert statuses[-1] == 0xB000  # one of two sub-operations failed
    assert len(received) == 1
    assert (f"the C-GET requestor GETTER proposed no presentation context with the SCP role "
            f"for SOP class {PRIVATE} (private SOP class)") in log_text(setup.server)


def test_with_the_setting_off_c_store_is_refused_and_c_get_still_works(
    tmp_path: Path
) -> None:
    study = f.make_uid("unknown-sop-class", "off")
    files = instances(tmp_path / "sent", study)
    data = ["--data-dir", str(tmp_path / "data"),
            "--database-url", f"sqlite:///{tmp_path}/index.sqlite"]
    imported = subprocess.run([sys.executable, "-m", "pacs.cli", "import",
                               str(tmp_path / "sent"), *data], capture_output=True, text=True,
                              timeout=120)
    assert "stored: 2" in imported.stdout, imported.stdout + imported.stderr
    server = PacsServer(data_dir=tmp_path / "data", database_url=data[-1],
                        start_env={"PACS_ACCEPT_UNKNOWN_SOP_CLASSES": "false"})
    try:
        server.start()
        other = instances(tmp_path / "other", f.make_uid("unknown-sop-class", "refused"))
        refused = dcmtk.storescu(server.dimse_port, list(other.values()), workdir=tmp_path)
        statuses, received = c_get(server.dimse_port, study, [RETIRED_US, PRIVATE])
    finally:
        server.stop()

    assert dcmtk.successes(refused) == 0
    assert "No Acceptable Presentation Contexts" in dcmtk.status_lines(refused)
    assert statuses[-1] == 0x0000
    assert received == {uid: dataset_bytes(p.read_bytes()) for uid, p in files.items()}


def test_only_storage_classes_are_accepted_and_lossless_comes_first(setup: Setup) -> None:
    """Standard classes of services not served here stay refused; those served (the
    worklist, storage commitment) get their own contexts, never storage ones; an unknown
    storage class gets the same transfer syntax preference as a known one (pynetdicom's
    unrestricted mode would take the first proposed, here the lossy one)."""
    worklist = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND
    commitment = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model
    print_management = "1.2.840.10008.5.1.1.9"  # Basic Grayscale Print Management Meta
    hanging_protocol_find = "1.2.840.10008.5.1.4.38.2"  # Hanging Protocol - FIND
    ae = AE(ae_title="PROPOSER")
    for sop_class in (worklist, commitment, print_management, hanging_protocol_find,
                      RETIRED_US, PRIVATE):
        ae.add_requested_context(sop_class, [JPEGBaseline8Bit, ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", setup.server.dimse_port, ae_title="PACS")
    try:
        accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0])
                    for cx in assoc.accepted_contexts}
    finally:
        assoc.release()

    assert accepted == {RETIRED_US: ExplicitVRLittleEndian, PRIVATE: ExplicitVRLittleEndian,
                        worklist: ExplicitVRLittleEndian, commitment: ExplicitVRLittleEndian}


def test_routing_sends_them_and_names_a_refusing_peer(tmp_path: Path) -> None:
    promiscuous = dcmtk.Storescp(tmp_path / "dest", ae_title="DEST", promiscuous=True).start()
    strict = dcmtk.Storescp(tmp_path / "strict", ae_title="STRICT").start()
    server = PacsServer(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/index.sqlite",
        extra_args=["--peer", promiscuous.peer, "--peer", strict.peer, "--route", "*=DEST",
                    "--route", "*=STRICT", "--stable-seconds", "0.5"],
        start_env={"PACS_ROUTE_RETRY_SECONDS": "30"},
    )
    study = f.make_uid("unknown-sop-class", "routed")
    files = instances(tmp_path / "sent", study)
    try:
        server.start()
        result = dcmtk.storescu(server.dimse_port, list(files.values()), workdir=tmp_path)
        assert dcmtk.successes(result) == 2, dcmtk.status_lines(result)

        def finished() -> dict[str, dict[str, object]]:
            jobs = httpx.get(f"{server.base_url}/api/jobs", params={"study": study},
                             timeout=30).json()
            ended = {j["destination"]: j for j in jobs if j["state"] in ("done", "failed")}
            return ended if len(ended) == 2 else {}

        jobs = until("both routing jobs ended", finished)
    finally:
        server.stop()
        promiscuous.stop()
        strict.stop()

    assert jobs["DEST"]["state"] == "done" and jobs["DEST"]["sent"] == 2
    delivered = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID):
                 dataset_bytes(p.read_bytes()) for p in promiscuous.files()}
    assert delivered == {uid: dataset_bytes(p.read_bytes()) for uid, p in files.items()}
    assert jobs["STRICT"]["state"] == "failed"
    assert (f"STRICT accepted no presentation context for SOP class {PRIVATE} (private SOP "
            "class)") in str(jobs["STRICT"]["last_error"])
