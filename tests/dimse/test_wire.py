"""The DIMSE transport on the wire, black-box, against a real ``pacs serve``: C-STORE requests
laid out PDV by PDV as odd-but-legal and hostile peers send them (``tests/support/raw_dimse``),
and the C-STORE sub-operations of C-GET and C-MOVE as pynetdicom and DCMTK peers receive them.

The fast transport serves a C-STORE-RQ on the connection's own thread when the first PDV of a
PDU is its whole command set (``pacs/dimse/transport/inline.py``) and sends sub-operations
itself (``outbound.py``); everything here but the protocol breaks must also hold for pynetdicom
as published (``PACS_DIMSE_TRANSPORT=stock``), whose answers are the yardstick.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.conftest import dimse_transport
from tests.factories import datasets as f
from tests.support import dcmtk
from tests.support import raw_dimse as raw
from tests.support.files import dataset_bytes
from tests.support.server import PacsServer, free_port
from tests.support.wait import until

CT, MR = str(CTImageStorage), str(MRImageStorage)
EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
FIND = str(StudyRootQueryRetrieveInformationModelFind)
CT_CX, MR_CX, ECHO_CX, FIND_CX = 1, 3, 5, 7
CONTEXTS = [(CT_CX, CT, [EXPLICIT]), (MR_CX, MR, [EXPLICIT]),
            (ECHO_CX, raw.VERIFICATION, [IMPLICIT]), (FIND_CX, FIND, [IMPLICIT])]

C_STORE_RSP, C_ECHO_RSP = 0x8001, 0x8030
SUCCESS, WARNING_SOME_FAILED = 0x0000, 0xB000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xA900  # pacs's answer to a data set that is not the request's
STUDY = f.make_uid("wire", "ct-512-study")  # three CT 512x512 instances, stored at start
FAILED_UID_COMMENT = "no room for this one"

PduLayout = Callable[[int, bytes, bytes, int], list[bytes]]


# -- peers -----------------------------------------------------------------------------------


class Destination:
    """A pynetdicom Storage SCP as a C-MOVE destination, recording what it received and the
    size of every PDU that came; it can refuse one instance, or abort on the n-th request."""

    def __init__(self, ae_title: str, *, max_pdu: int = 16384, refuse: str | None = None,
                 abort_at: int | None = None, split_writes: bool = False) -> None:
        self.ae_title = ae_title
        self.refuse = refuse
        self.abort_at = abort_at
        self.split_writes = split_writes  # every PDU written as its header, a pause, the rest
        self.received: dict[str, bytes] = {}  # SOP Instance UID → data set bytes
        self.acknowledged: list[str] = []  # answered Success
        self.pdu_sizes: list[int] = []
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_DATA_RECV, self._on_data),
            (evt.EVT_CONN_OPEN, self._on_open)])
        assert server is not None  # (block=False returns it)
        self.server = server

    @property
    def peer(self) -> str:
        return f"{self.ae_title}=127.0.0.1:{self.server.server_address[1]}"

    def clear(self) -> None:
        self.received.clear()
        self.acknowledged.clear()
        self.pdu_sizes.clear()

    def _on_open(self, event: Any) -> None:
        if not self.split_writes:
            return
        raw_socket = event.assoc.dul.socket.socket

        class Split:  # the socket, each PDU written in two pieces 50 ms apart
            def __getattr__(self, name: str) -> Any:
                return getattr(raw_socket, name)

            def sendall(self, data: bytes) -> None:
                raw_socket.sendall(data[:6])
                time.sleep(0.05)
                raw_socket.sendall(data[6:])

            def send(self, data: bytes) -> int:
                self.sendall(data)
                return len(data)

        event.assoc.dul.socket.socket = Split()

    def _on_data(self, event: Any) -> None:
        self.pdu_sizes.append(len(event.data))

    def _on_store(self, event: Any) -> int | Dataset:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received[uid] = event.encoded_dataset(include_meta=False)
        if uid == self.refuse:
            answer = Dataset()
            answer.Status = OUT_OF_RESOURCES
            answer.ErrorComment = FAILED_UID_COMMENT
            return answer
        if len(self.received) == self.abort_at:
            event.assoc.abort()  # mid-transfer: this request is never answered
            return SUCCESS
        self.acknowledged.append(uid)
        return SUCCESS


class AbortingStorescp:
    """DCMTK ``storescp --abort-during``: aborts every association while it receives the
    first C-STORE-RQ, then listens again."""

    def __init__(self, ae_title: str = "ABORTS") -> None:
        self.port = free_port()
        self.ae_title = ae_title
        self.process = subprocess.Popen(
            [dcmtk.tool("storescp"), "-aet", ae_title, "--abort-during", "--ignore",
             str(self.port)],
            env=dcmtk.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until("storescp listening", lambda: dcmtk.echoscu(self.port, ae_title).returncode == 0,
              10)

    @property
    def peer(self) -> str:
        return f"{self.ae_title}=127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Wire:
    server: PacsServer
    study: dict[str, bytes]  # SOP Instance UID → data set bytes, as stored by storescu
    small: Destination  # maximum PDU 4096
    picky: Destination  # refuses the second instance of the study
    quitter: Destination  # aborts on the second request
    aborting: AbortingStorescp
    halting: Destination  # writes each PDU in two pieces, 50 ms apart
    workdir: Path


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    root = tmp_path_factory.mktemp("wire")
    datasets = [f.ct_instance(PatientID="WIRE-512", StudyInstanceUID=STUDY, InstanceNumber=n,
                              Rows=512, Columns=512) for n in (1, 2, 3)]
    study = {str(ds.SOPInstanceUID): dataset_bytes(f.to_part10_bytes(ds)) for ds in datasets}
    uids = sorted(study)
    small = Destination("SMALL", max_pdu=4096)
    picky = Destination("PICKY", refuse=uids[1])
    quitter = Destination("QUITTER", abort_at=2)
    aborting = AbortingStorescp()
    halting = Destination("HALTING", split_writes=True)
    peers = [arg for d in (small, picky, quitter, aborting, halting)
             for arg in ("--peer", d.peer)]
    server = PacsServer(
        data_dir=root / "data", database_url=f"sqlite:///{root}/index.sqlite",
        # associations served by the listening process (its descriptors counted)
        extra_args=["--dimse-processes", "1", *peers],
    )
    try:
        server.start()
        dcmtk.store_datasets(server.dimse_port, datasets, workdir=root)
        yield Wire(server, study, small, picky, quitter, aborting, halting, root)
    finally:
        server.stop()
        for destination in (small, picky, quitter, halting):
            destination.server.shutdown()
        aborting.stop()


# -- what the server holds -------------------------------------------------------------------


def retrieved(server: PacsServer, ds: Dataset) -> bytes | None:
    """The data set bytes WADO-RS returns for ``ds`` as stored; None when it has none."""
    url = (f"{server.base_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
           f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    answer = httpx.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"},
                       timeout=30)
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return dataset_bytes(answer.content)


def found(server: PacsServer, sop_instance_uid: str) -> list[Any]:
    """QIDO-RS matches for one SOP Instance UID."""
    answer = httpx.get(f"{server.base_url}/dicom-web/instances",
                       params={"SOPInstanceUID": sop_instance_uid}, timeout=30)
    assert answer.status_code in (200, 204), answer.text
    return list(answer.json()) if answer.status_code == 200 else []


def leftovers(server: PacsServer) -> set[str]:
    """Files in the data dir's tmp folder that hold something (the receive files made ahead
    of time are empty)."""
    names = set()
    for path in (server.data_dir / "tmp").rglob("*"):
        try:
            if path.is_file() and path.stat().st_size:
                names.add(path.name)
        except FileNotFoundError:  # removed as we looked
            continue
    return names


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- C-STORE as laid out by the requestor ----------------------------------------------------


def instance(name: str, **attributes: Any) -> tuple[Dataset, bytes]:
    """A CT instance of its own patient, with its data set bytes (Explicit VR LE)."""
    ds = f.ct_instance(PatientID=f"WIRE-{name}", **attributes)
    return ds, dataset_bytes(f.to_part10_bytes(ds))


def one_pdu(context_id: int, command: bytes, data: bytes, size: int) -> list[bytes]:
    """The command and the whole data set, two PDVs in one PDU."""
    return [raw.p_data_tf((context_id, raw.COMMAND_LAST, command),
                          (context_id, raw.DATA_LAST, data))]


def several_pdvs_per_pdu(context_id: int, command: bytes, data: bytes, size: int) -> list[bytes]:
    """The command and two data fragments in the first PDU, then three fragments a PDU."""
    pdvs = [(context_id, raw.COMMAND_LAST, command), *raw.data_pdvs(context_id, data, size)]
    return [raw.p_data_tf(*pdvs[:3])] + [raw.p_data_tf(*pdvs[n:n + 3])
                                         for n in range(3, len(pdvs), 3)]


def command_over_two_pdus(context_id: int, command: bytes, data: bytes, size: int) -> list[bytes]:
    """The command set in two fragments, one a PDU, the second with the first data fragment."""
    pdvs = raw.data_pdvs(context_id, data, size)
    return [raw.p_data_tf((context_id, raw.COMMAND_MORE, command[:21])),
            raw.p_data_tf((context_id, raw.COMMAND_LAST, command[21:]), pdvs[0]),
            *(raw.p_data_tf(pdv) for pdv in pdvs[1:])]


def command_in_two_pdvs(context_id: int, command: bytes, data: bytes, size: int) -> list[bytes]:
    """The command set in two fragments and the data set, all PDVs of one PDU."""
    return [raw.p_data_tf((context_id, raw.COMMAND_MORE, command[:8]),
                          (context_id, raw.COMMAND_LAST, command[8:]),
                          *raw.data_pdvs(context_id, data, size))]


def one_fragment_a_pdu(context_id: int, command: bytes, data: bytes, size: int) -> list[bytes]:
    """pynetdicom's and DCMTK's layout: one PDV a PDU."""
    return [raw.p_data_tf((context_id, raw.COMMAND_LAST, command)),
            *(raw.p_data_tf(pdv) for pdv in raw.data_pdvs(context_id, data, size))]


LAYOUTS: dict[str, PduLayout] = {
    "one-pdu": one_pdu,
    "several-pdvs-per-pdu": several_pdvs_per_pdu,
    "command-over-two-pdus": command_over_two_pdus,
    "command-in-two-pdvs": command_in_two_pdvs,
    "one-fragment-a-pdu": one_fragment_a_pdu,
}


def store(assoc: raw.RawAssociation, ds: Dataset, data: bytes, *, message_id: int,
          layout: PduLayout = one_fragment_a_pdu, size: int = 1000,
          sop_class_uid: str = CT, context_id: int = CT_CX) -> raw.Response:
    """C-STORE ``data`` as ``layout`` cuts it; the response."""
    command = raw.store_rq(sop_class_uid, str(ds.SOPInstanceUID), message_id)
    assoc.send(*layout(context_id, command, data, size))
    return assoc.response()


def assert_stored(wire: Wire, response: raw.Response, ds: Dataset, data: bytes,
                  message_id: int) -> None:
    """Answered Success to this request, and kept byte for byte."""
    command = response.command
    assert int(command.CommandField) == C_STORE_RSP
    assert int(command.Status) == SUCCESS, command
    assert int(command.MessageIDBeingRespondedTo) == message_id
    assert str(command.AffectedSOPInstanceUID) == str(ds.SOPInstanceUID)
    assert str(command.AffectedSOPClassUID) == CT
    assert retrieved(wire.server, ds) == data


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_legal_fragmentation_is_stored_byte_identical(wire: Wire, layout: str) -> None:
    ds, data = instance(layout, Rows=128, Columns=128, seed=7)
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        response = store(assoc, ds, data, message_id=4242, layout=LAYOUTS[layout], size=777)
        assert assoc.release()
    assert_stored(wire, response, ds, data, 4242)


def test_c_stores_back_to_back_on_one_association(wire: Wire) -> None:
    """Each request as soon as the previous one is answered, in every layout, each response
    matched to its request by Message ID (0 and 65535 too: PS3.7 9.3.1.1 allows any)."""
    sent = []
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        for number, (name, layout) in enumerate(LAYOUTS.items()):
            ds, data = instance(f"b2b-{name}", InstanceNumber=number + 1)
            message_id = (0, 65535, 1, 2, 32768)[number]
            response = store(assoc, ds, data, message_id=message_id, layout=layout, size=1500)
            sent.append((response, ds, data, message_id))
        assert assoc.echo(ECHO_CX, message_id=9) == SUCCESS
        assert assoc.release()
    for response, ds, data, message_id in sent:
        assert_stored(wire, response, ds, data, message_id)


@pytest.mark.parametrize("max_pdu", [4096, 128])
def test_the_response_respects_the_requestors_maximum_pdu(wire: Wire, max_pdu: int) -> None:
    """A requestor that receives PDUs of ``max_pdu`` bytes at most (PS3.8 D.1; 128 is odd but
    legal, and splits the C-STORE-RSP command set): the response comes within it; a CT 512
    data set goes in fragments that long."""
    ds, data = instance(f"max-pdu-{max_pdu}", Rows=512, Columns=512)
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS, max_pdu=max_pdu) as assoc:
        response = store(assoc, ds, data, message_id=7, size=4096 - 6)
        assert assoc.release()
    sizes = [pdu.size for pdu in response.pdus]
    assert max(sizes) <= max_pdu + 6, sizes
    assert len(sizes) == (1 if max_pdu == 4096 else 2)  # (the command set: 170-odd bytes)
    assert_stored(wire, response, ds, data, 7)


# -- protocol breaks in the middle of a data set ---------------------------------------------


def command_in_the_next_pdu(command: bytes, pdvs: list[tuple[int, int, bytes]]) -> list[bytes]:
    return [raw.p_data_tf((CT_CX, raw.COMMAND_LAST, command), *pdvs[:2]),
            raw.p_data_tf((CT_CX, raw.COMMAND_LAST, command))]


def command_in_the_same_pdu(command: bytes, pdvs: list[tuple[int, int, bytes]]) -> list[bytes]:
    return [raw.p_data_tf((CT_CX, raw.COMMAND_LAST, command), *pdvs[:2],
                          (CT_CX, raw.COMMAND_LAST, command))]


def other_context_in_the_next_pdu(command: bytes, pdvs: list[tuple[int, int, bytes]]
                                  ) -> list[bytes]:
    return [raw.p_data_tf((CT_CX, raw.COMMAND_LAST, command), *pdvs[:2]),
            raw.p_data_tf((MR_CX, *pdvs[2][1:]))]


def other_context_in_the_same_pdu(command: bytes, pdvs: list[tuple[int, int, bytes]]
                                  ) -> list[bytes]:
    return [raw.p_data_tf((CT_CX, raw.COMMAND_LAST, command), *pdvs[:2],
                          (MR_CX, *pdvs[2][1:]))]


BREAKS = {
    "command-in-the-next-pdu": command_in_the_next_pdu,
    "command-in-the-same-pdu": command_in_the_same_pdu,
    "other-context-in-the-next-pdu": other_context_in_the_next_pdu,
    "other-context-in-the-same-pdu": other_context_in_the_same_pdu,
}


@pytest.mark.fast_transport("a PDV that breaks a data set is taken into the message")
@pytest.mark.parametrize("kind", BREAKS)
def test_a_data_set_broken_by_another_pdv_aborts_and_leaves_nothing(wire: Wire, kind: str
                                                                    ) -> None:
    """PS3.8 9.3.5: a data set's fragments follow each other on its context; a command
    fragment or another context's PDV in between leaves no reading but an A-ABORT."""
    before = leftovers(wire.server)
    ds, data = instance(f"break-{kind}", Rows=128, Columns=128)
    command = raw.store_rq(CT, str(ds.SOPInstanceUID), 5)
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        assoc.send(*BREAKS[kind](command, raw.data_pdvs(CT_CX, data, 2000)))
        assert assoc.aborted()

    until("no partial data set left", lambda: leftovers(wire.server) <= before, 30)
    assert found(wire.server, str(ds.SOPInstanceUID)) == []
    assert dcmtk.echoscu(wire.server.dimse_port).returncode == 0


# -- a C-STORE whose SOP class is not its context's --------------------------------------------


def test_another_storage_class_on_the_context_is_stored_as_pynetdicom_does(wire: Wire) -> None:
    """An MR instance sent as MR on the CT context: pynetdicom serves a request by its
    Affected SOP Class, not by its context's, and so it is stored."""
    ds = f.mr_instance(PatientID="WIRE-mr-on-ct")
    data = dataset_bytes(f.to_part10_bytes(ds))
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        command = store(assoc, ds, data, message_id=11, sop_class_uid=MR).command
        assert assoc.release()
    assert (int(command.CommandField), int(command.Status)) == (C_STORE_RSP, SUCCESS)
    assert str(command.AffectedSOPClassUID) == MR
    assert int(command.MessageIDBeingRespondedTo) == 11
    assert retrieved(wire.server, ds) == data


def test_a_request_that_is_not_its_data_set_is_refused_as_pynetdicom_does(wire: Wire) -> None:
    """A CT data set sent as MR on the CT context: the request reaches pacs's store, which
    refuses a data set that is not the one announced."""
    ds, data = instance("ct-as-mr")
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        command = store(assoc, ds, data, message_id=12, sop_class_uid=MR).command
        assert assoc.release()
    assert (int(command.CommandField), int(command.Status)) == (C_STORE_RSP, CANNOT_UNDERSTAND)
    assert "differs" in str(command.ErrorComment)
    assert found(wire.server, str(ds.SOPInstanceUID)) == []


def test_a_c_store_of_the_verification_class_is_echoed_as_pynetdicom_does(wire: Wire) -> None:
    """A C-STORE-RQ naming the Verification SOP Class, on the CT context: pynetdicom serves
    it with the Verification service class, which answers C-ECHO-RSP Success; nothing kept."""
    ds, data = instance("verification-on-ct")
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        command = store(assoc, ds, data, message_id=13, sop_class_uid=raw.VERIFICATION).command
        assert assoc.release()
    assert (int(command.CommandField), int(command.Status)) == (C_ECHO_RSP, SUCCESS)
    assert int(command.MessageIDBeingRespondedTo) == 13
    assert found(wire.server, str(ds.SOPInstanceUID)) == []


@pytest.mark.xfail(dimse_transport() == "stock", strict=True, reason=(
    "stock pynetdicom: a C-STORE-RQ whose Affected SOP Class no storage service serves "
    "(answered C-ECHO-RSP, or aborted) leaves its received data set in the data dir's tmp "
    "folder until the next start"))
@pytest.mark.parametrize("sop_class_uid", [raw.VERIFICATION, FIND])
def test_a_c_store_no_storage_service_takes_leaves_no_file(wire: Wire, sop_class_uid: str
                                                           ) -> None:
    """A C-STORE-RQ naming the Verification or a Q/R SOP Class on the CT context: its data
    set is received into a file before pynetdicom's service for that class declines it; the
    file must go with the request, as a stored or refused one's does."""
    before = leftovers(wire.server)
    ds, data = instance(f"leftover-{sop_class_uid}")
    command = raw.store_rq(sop_class_uid, str(ds.SOPInstanceUID), 14)
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        assoc.send(*one_fragment_a_pdu(CT_CX, command, data, 4000))
        if sop_class_uid == FIND:  # pynetdicom's Q/R service class aborts
            assert assoc.aborted()
        else:
            assert int(assoc.response().command.CommandField) == C_ECHO_RSP
            assert assoc.release()
    until("the received data set removed", lambda: leftovers(wire.server) <= before, 5)


@pytest.mark.parametrize(("context_id", "sop_class_uid"), [
    (ECHO_CX, raw.VERIFICATION),  # pynetdicom's Verification service class: C-ECHO-RSP
    (FIND_CX, FIND),  # pynetdicom's Q/R service class refuses a C-STORE: A-ABORT
])
def test_a_c_store_on_a_context_of_another_service_stores_nothing(
    wire: Wire, context_id: int, sop_class_uid: str,
) -> None:
    """A C-STORE-RQ on the Verification or the Q/R FIND context, naming that context's SOP
    Class, with a data set claiming it too: pynetdicom serves it by that class's service
    (C-ECHO-RSP; A-ABORT), and pacs keeps nothing."""
    ds = f.encode(f.ct_instance(PatientID=f"WIRE-on-{sop_class_uid}", SOPClassUID=sop_class_uid),
                  ImplicitVRLittleEndian)
    data = dataset_bytes(f.to_part10_bytes(ds))
    command = raw.store_rq(sop_class_uid, str(ds.SOPInstanceUID), 15)
    with raw.RawAssociation.open(wire.server.dimse_port, CONTEXTS) as assoc:
        assoc.send(*one_fragment_a_pdu(context_id, command, data, 4000))
        if context_id == FIND_CX:
            answer = raw.A_ABORT if assoc.aborted() else None
        else:
            answer = int(assoc.response().command.CommandField)
            assert assoc.release()
    assert found(wire.server, str(ds.SOPInstanceUID)) == []
    assert answer == (raw.A_ABORT if context_id == FIND_CX else C_ECHO_RSP)


def test_a_refused_private_class_is_not_stored_through_another_context(tmp_path: Path) -> None:
    """With unknown SOP classes refused, a private one sent on the CT context is aborted, as
    pynetdicom finds no service class for it."""
    private = f.UID_ROOT + "77.1"
    server = PacsServer(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/i.db",
                        start_env={"PACS_ACCEPT_UNKNOWN_SOP_CLASSES": "false"})
    ds = f.sc_instance(SOPClassUID=private, PatientID="WIRE-private")
    data = dataset_bytes(f.to_part10_bytes(ds))
    command = raw.store_rq(private, str(ds.SOPInstanceUID), 16)
    try:
        server.start()
        contexts = [*CONTEXTS, (9, private, [EXPLICIT])]
        with raw.RawAssociation.open(server.dimse_port, contexts) as assoc:
            assert 9 not in assoc.accepted
            assoc.send(*one_fragment_a_pdu(CT_CX, command, data, 4000))
            aborted = assoc.aborted()
        stored = found(server, str(ds.SOPInstanceUID))
    finally:
        server.stop()
    assert stored == []
    assert aborted


# -- sub-operations to a peer with a small maximum PDU ---------------------------------------


def study_identifier() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = STUDY
    return identifier


def test_c_get_to_a_requestor_of_4096_byte_pdus(wire: Wire) -> None:
    """Every instance arrives as stored, in PDUs within the requestor's Maximum Length
    (a pynetdicom requestor advertises ``associate(max_pdu=...)``; ``AE.maximum_pdu_size``
    is what it advertises as an acceptor)."""
    received: dict[str, bytes] = {}
    sizes: list[int] = []

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(
            include_meta=False)
        return SUCCESS

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", wire.server.dimse_port, ae_title="PACS", max_pdu=4096,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store),
                                       (evt.EVT_DATA_RECV, lambda e: sizes.append(len(e.data)))])
    assert assoc.is_established
    statuses = [int(status.Status) for status, _ in
                assoc.send_c_get(study_identifier(), StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()

    assert statuses[-1] == SUCCESS, [hex(s) for s in statuses]
    assert received == wire.study
    assert sizes and max(sizes) <= 4096 + 6, max(sizes)


def move(wire: Wire, destination: str, *, dimse_timeout: float = 30
         ) -> tuple[list[Dataset], Dataset | None]:
    """C-MOVE of the CT 512 study to ``destination`` by a pynetdicom requestor that waits
    ``dimse_timeout`` seconds for each response: every response's status Dataset, and the
    final one's identifier."""
    ae = AE(ae_title="MOVER")
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", wire.server.dimse_port, ae_title="PACS")
    assert assoc.is_established
    responses = list(assoc.send_c_move(study_identifier(), destination,
                                       StudyRootQueryRetrieveInformationModelMove))
    # (pynetdicom aborts an association whose peer does not answer in time)
    assert assoc.is_established, f"no C-MOVE response within {dimse_timeout} s"
    assert int(assoc.send_c_echo().Status) == SUCCESS  # the association goes on
    assoc.release()
    return [status for status, _ in responses], responses[-1][1]


def test_c_move_to_a_destination_of_4096_byte_pdus(wire: Wire) -> None:
    wire.small.clear()
    statuses, _ = move(wire, "SMALL")

    assert int(statuses[-1].Status) == SUCCESS
    assert wire.small.received == wire.study
    assert max(wire.small.pdu_sizes) <= 4096 + 6, max(wire.small.pdu_sizes)


def _pending_counts(statuses: list[Dataset]) -> list[tuple[int, int]]:
    """(remaining, completed) of each Pending response, checked to be all but the last."""
    pending = [(int(s.NumberOfRemainingSuboperations), int(s.NumberOfCompletedSuboperations))
               for s in statuses[:-1] if int(s.Status) == 0xFF00]
    assert len(pending) == len(statuses) - 1, statuses
    assert int(statuses[-1].Status) == SUCCESS, statuses[-1]
    return pending


def test_c_move_reports_every_sub_operation_in_a_pending_response(wire: Wire) -> None:
    """PS3.4 C.4.2.1.6: a Pending response with the counts after each sub-operation (pacs
    writes it while the next request is with the destination), none after the last
    (pynetdicom as published sends one then too)."""
    wire.small.clear()
    statuses, _ = move(wire, "SMALL")
    pending = _pending_counts(statuses)

    assert pending[:2] == [(2, 1), (1, 2)] and pending[2:] in ([], [(0, 3)]), pending
    assert int(statuses[-1].NumberOfCompletedSuboperations) == 3


@pytest.mark.fast_transport("PACS_RETRIEVE_PENDING_INTERVAL is the fast transport's: "
                            "pynetdicom as published answers after every sub-operation")
def test_a_pending_interval_reports_progress_less_often(wire: Wire, tmp_path: Path) -> None:
    """With ``PACS_RETRIEVE_PENDING_INTERVAL=60`` a Pending response follows the first
    sub-operation only (the three take far less than a minute)."""
    wire.small.clear()
    server = PacsServer(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/i.db",
                        extra_args=["--peer", wire.small.peer],
                        start_env={"PACS_RETRIEVE_PENDING_INTERVAL": "60"})
    try:
        server.start()
        datasets = [f.ct_instance(PatientID="WIRE-512", StudyInstanceUID=STUDY,
                                  InstanceNumber=n) for n in (1, 2, 3)]
        dcmtk.store_datasets(server.dimse_port, datasets, workdir=tmp_path)
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        statuses = [status for status, _ in assoc.send_c_move(
            study_identifier(), "SMALL", StudyRootQueryRetrieveInformationModelMove)]
        assoc.release()
    finally:
        server.stop()
    assert _pending_counts(statuses) == [(2, 1)]
    assert len(wire.small.received) == 3


def test_c_move_to_a_destination_that_writes_each_pdu_in_two_pieces(wire: Wire) -> None:
    """A C-STORE-RSP whose PDU header comes 50 ms before its body (TCP may split any write)
    is waited for whole, not taken for something else."""
    wire.halting.clear()
    statuses, _ = move(wire, "HALTING")

    assert int(statuses[-1].Status) == SUCCESS
    assert wire.halting.received == wire.study
    assert sorted(wire.halting.acknowledged) == sorted(wire.study)


def test_c_get_cancelled_while_a_sub_operation_is_under_way(wire: Wire) -> None:
    """The requestor's C-CANCEL-RQ comes before its response to the first C-STORE: the
    cancel is honoured before the next sub-operation (final status Cancel, one completed),
    and the association goes on."""
    received: list[str] = []
    cancel: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            event.assoc.send_c_cancel(7, cancel["context_id"])
        return SUCCESS

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", wire.server.dimse_port, ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    cancel["context_id"] = next(
        cx.context_id for cx in assoc.accepted_contexts
        if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet)
    responses = [status for status, _ in assoc.send_c_get(
        study_identifier(), StudyRootQueryRetrieveInformationModelGet, msg_id=7)]
    assert int(assoc.send_c_echo().Status) == SUCCESS
    assoc.release()

    final = responses[-1]
    assert int(final.Status) == 0xFE00, final
    assert int(final.NumberOfCompletedSuboperations) == 1
    assert len(received) == 1


# -- destinations that fail or abort ---------------------------------------------------------


def test_a_sub_operation_the_destination_fails_is_named_in_the_final_response(wire: Wire
                                                                              ) -> None:
    """PS3.4 C.4.2.1.5: Warning, one failed sub-operation, its UID in the Failed SOP Instance
    UID List; the others delivered."""
    wire.picky.clear()
    statuses, identifier = move(wire, "PICKY")
    refused = wire.picky.refuse
    final = statuses[-1]

    assert int(final.Status) == WARNING_SOME_FAILED, final
    assert int(final.NumberOfFailedSuboperations) == 1
    assert int(final.NumberOfCompletedSuboperations) == 2
    assert identifier is not None
    assert identifier.FailedSOPInstanceUIDList == refused
    assert wire.picky.received == wire.study  # (the refused one came too, and was refused)
    assert sorted(wire.picky.acknowledged) == sorted(set(wire.study) - {refused})


def test_a_destination_that_aborts_mid_transfer(wire: Wire) -> None:
    """The C-MOVE answers (in the 20 s a response its requestor waits; pacs's own DIMSE
    timeout is 30 s, so the abort must be noticed, not timed out): what the destination did
    not acknowledge is failed, by UID."""
    wire.quitter.clear()
    statuses, identifier = move(wire, "QUITTER", dimse_timeout=20)
    final = statuses[-1]
    unacknowledged = set(wire.study) - set(wire.quitter.acknowledged)

    assert int(final.Status) != SUCCESS and int(final.Status) >> 12 in (0xA, 0xB, 0xC), final
    assert len(wire.quitter.acknowledged) == 1  # the first; the second was aborted
    assert identifier is not None
    failed = identifier.FailedSOPInstanceUIDList
    assert set([failed] if isinstance(failed, str) else failed) == unacknowledged
    assert int(final.get("NumberOfCompletedSuboperations", 1)) == 1
    assert dcmtk.echoscu(wire.server.dimse_port).returncode == 0


def test_c_moves_to_an_aborting_storescp_leak_no_descriptor(wire: Wire) -> None:
    """20 C-MOVEs whose destination aborts each transfer, ten at a time (fewer than the
    connections one address may hold): the listening process (it serves the associations,
    ``--dimse-processes 1``) holds no more descriptors afterwards, and answers each."""
    assert wire.server.process is not None
    pid = wire.server.process.pid
    port = wire.server.dimse_port
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY}"]

    def aborted_batch() -> None:
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(
                lambda _: dcmtk.movescu(port, keys, destination="ABORTS"), range(20)))
        for result in results:
            text = dcmtk.status_lines(result)
            assert "Final Move Response" in text and "(Success)" not in text, text

    # the index's connection pool may grow under ten C-MOVEs at a time (a pooled
    # connection's database files are not a leak), and pynetdicom 3.0 leaves a socket it
    # gave up on to the garbage collector now and then: two more batches may add a few
    # descriptors, where a leak of one per C-MOVE would add forty
    aborted_batch()
    time.sleep(2)
    after_one = open_fds(pid)
    aborted_batch()
    aborted_batch()
    until(f"at most {after_one + 8} descriptors", lambda: open_fds(pid) <= after_one + 8, 30)
    assert dcmtk.echoscu(port).returncode == 0


def test_an_aborted_transfer_writes_nothing_to_other_connections(tmp_path: Path) -> None:
    """Once a C-MOVE destination aborted, the descriptor numbers its association held are
    taken by new connections (here ten idle HTTP clients, which the server has nothing to
    say to within its header timeout): none receives a byte. (The fast transport's wakers
    were written to after closing, when the sub-operation's wait for a response timed out,
    30 s later: a NUL byte went to one of these clients. A write that late is caught here;
    one within milliseconds of the close would come before the clients.)"""
    quitter = Destination("QUITTER", abort_at=2)
    server = PacsServer(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/i.db",
                        extra_args=["--dimse-processes", "1", "--peer", quitter.peer],
                        start_env={"PACS_HTTP_HEADER_TIMEOUT": "120"})
    datasets = [f.ct_instance(PatientID="WIRE-512", StudyInstanceUID=STUDY, InstanceNumber=n)
                for n in (1, 2, 3)]
    idle: list[socket.socket] = []
    try:
        server.start()
        assert server.process is not None
        pid = server.process.pid
        dcmtk.store_datasets(server.dimse_port, datasets, workdir=tmp_path)
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.dimse_timeout = 120
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        before = open_fds(pid)
        with ThreadPoolExecutor(max_workers=1) as pool:
            moving = pool.submit(lambda: list(assoc.send_c_move(
                study_identifier(), "QUITTER", StudyRootQueryRetrieveInformationModelMove)))
            until("the destination aborted", lambda: len(quitter.received) == 2, 30)
            until("its connection closed (or the C-MOVE answered)",
                  lambda: moving.done() or open_fds(pid) <= before, 30)
            idle += [socket.create_connection(("127.0.0.1", server.http_port))
                     for _ in range(10)]
            responses = moving.result()
        assoc.release()
        received = [_pending(sock) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
        server.stop()
        quitter.server.shutdown()
    assert int(responses[-1][0].Status) == WARNING_SOME_FAILED
    assert received == [b""] * 10


def _pending(sock: socket.socket) -> bytes:
    """What ``sock`` has received so far, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return b""
