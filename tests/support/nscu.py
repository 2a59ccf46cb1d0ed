"""pynetdicom peers for the DIMSE-N services: an MPPS SCU (N-CREATE, N-SET), a Storage
Commitment SCU (N-ACTION, waiting for the N-EVENT-REPORT on its association or not) and a
Storage Commitment report receiver (an SCP for the N-EVENT-REPORT on a new association)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_context, evt

from tests.factories.datasets import make_uid
from tests.support.wait import until

MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@contextmanager
def association(port: int, ae_title: str, *contexts: str,
                handlers: list[Any] | None = None) -> Iterator[Any]:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=handlers or [])
    assert assoc.is_established, "association refused"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def mpps_in_progress(*, study_instance_uid: str | None, accession_number: str = "",
                     step_id: str = "SPS1", status: str = "IN PROGRESS") -> Dataset:
    """The N-CREATE attribute list of an MPPS (PS3.4 F.7.2.1, Table F.7.2-1, abridged)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate = "20260101"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P1"
    item = Dataset()
    if study_instance_uid is not None:
        item.StudyInstanceUID = study_instance_uid
    item.AccessionNumber = accession_number
    item.ScheduledProcedureStepID = step_id
    item.RequestedProcedureID = "RP1"
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PerformedSeriesSequence = Sequence([])
    return ds


def mpps_final(status: str, series: dict[str, list[str]], *,
               sop_class: str = CT_IMAGE) -> Dataset:
    """The N-SET modification list that ends an MPPS, referencing ``series`` (series UID →
    SOP Instance UIDs)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20260101"
    ds.PerformedProcedureStepEndTime = "103000"
    items = []
    for series_uid, instances in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.Modality = "CT"
        item.ReferencedImageSequence = Sequence([_reference(sop_class, uid) for uid in instances])
        items.append(item)
    ds.PerformedSeriesSequence = Sequence(items)
    return ds


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def commitment_request(references: list[tuple[str, str]],
                       transaction_uid: str | None = None) -> Dataset:
    """N-ACTION Action Information (PS3.4 J.3.2.1.1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid or make_uid("commit", *references[:1])
    ds.ReferencedSOPSequence = Sequence([_reference(c, i) for c, i in references])
    return ds


@dataclass
class Reports:
    """N-EVENT-REPORTs received: (event type, Event Information, the sender's AE title)."""

    received: list[tuple[int, Dataset, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_report(self, event: Any) -> tuple[int, Dataset | None]:
        assoc = event.assoc
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        with self.lock:
            self.received.append((int(event.request.EventTypeID), event.event_information,
                                  str(peer.ae_title).strip()))
        return 0x0000, None

    def wait(self, count: int = 1) -> list[tuple[int, Dataset, str]]:
        until(f"{count} N-EVENT-REPORT(s)", lambda: len(self.received) >= count)
        return list(self.received)


def request_commitment(port: int, ae_title: str, action: Dataset, *,
                       wait_for_report: bool) -> tuple[int, Reports]:
    """N-ACTION; with ``wait_for_report`` the association stays open until the report came
    on it. Returns (N-ACTION status, the reports received on the association)."""
    reports = Reports()
    with association(port, ae_title, COMMITMENT,
                     handlers=[(evt.EVT_N_EVENT_REPORT, reports.on_report)]) as assoc:
        status, _ = assoc.send_n_action(action, 1, COMMITMENT, COMMITMENT_INSTANCE)
        assert status is not None, "no N-ACTION response"
        if wait_for_report and int(status.Status) == 0:
            reports.wait()
    return int(status.Status), reports


@contextmanager
def report_receiver(ae_title: str) -> Iterator[tuple[int, Reports]]:
    """An SCP taking N-EVENT-REPORTs of the Storage Commitment Push Model SOP Class on a
    free loopback port: (port, reports)."""
    reports = Reports()
    ae = AE(ae_title=ae_title)
    context = build_context(COMMITMENT)
    context.scu_role = True
    context.scp_role = True
    ae.add_supported_context(context.abstract_syntax, context.transfer_syntax,
                             scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.on_report)])
    try:
        yield int(server.server_address[1]), reports
    finally:
        server.shutdown()
