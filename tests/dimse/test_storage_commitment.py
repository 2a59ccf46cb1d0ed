"""The Storage Commitment Push Model SCP (PS3.4 J.3) of a real ``pacs serve``, driven by a
pynetdicom SCU, on SQLite and PostgreSQL, over the transport ``PACS_DIMSE_TRANSPORT`` names.

The N-ACTION is answered at once; the N-EVENT-REPORT comes on the requestor's association
while it waits there, else on a new association to the AE registry's address of the calling
AE (a pynetdicom SCP on a free loopback port). Instances stored by storescu are committed
(whatever their QA state), unknown ones fail with 0x0112, one stored under another SOP class
with 0x0119 (J.3.3.1.1); an AE the registry cannot reach leaves the request pending with the
reason; malformed requests and AEs without the ``store`` service are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.datasets import ct_instance, make_uid
from tests.support import dcmtk
from tests.support.nscu import (
    CT_IMAGE,
    MPPS,
    Reports,
    association,
    commitment_request,
    mpps_in_progress,
    report_receiver,
    request_commitment,
)
from tests.support.server import PacsServer
from tests.support.wait import until

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY = make_uid("commit", "study")


@dataclass
class Site:
    server: PacsServer
    stored: list[str]  # SOP Instance UIDs of CT images stored by storescu
    receiver: Reports  # the N-EVENT-REPORTs LEAVER's SCP received

    @property
    def port(self) -> int:
        return self.server.dimse_port

    def commitments(self, transaction_uid: str) -> list[Any]:
        with self.server.services() as services:
            return services.commitment.by_transaction(transaction_uid)

    def api(self, path: str) -> Any:
        answer = httpx.get(f"{self.server.base_url}/api{path}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def site(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("commitment")
    with report_receiver("LEAVER") as (receiver_port, reports):
        server = PacsServer(data_dir=root / "data", database_url=module_database_url).start()
        try:
            added = server.cli("ae", "add", "LEAVER", "--host", "127.0.0.1", "--port",
                               str(receiver_port), "--allow", "store")
            assert added.returncode == 0, added.stderr
            images = [ct_instance(StudyInstanceUID=STUDY, InstanceNumber=n)
                      for n in range(1, 4)]
            dcmtk.store_datasets(server.dimse_port, images, workdir=root)
            yield Site(server, [str(ds.SOPInstanceUID) for ds in images], reports)
        finally:
            server.stop()


def _pairs(sequence: Any) -> list[tuple[str, str]]:
    return sorted((str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                  for item in sequence or [])


def test_the_report_comes_on_the_association_that_waits_for_it(site: Site) -> None:
    missing = make_uid("commit", "missing")
    transaction = make_uid("commit", "tx", 1)
    action = commitment_request([(CT_IMAGE, site.stored[0]), (CT_IMAGE, missing),
                                 (MR_IMAGE, site.stored[1])], transaction)

    status, reports = request_commitment(site.port, "WAITER", action, wait_for_report=True)

    assert status == 0x0000
    ((event_type, information, sender),) = reports.received
    assert event_type == 2  # some failed (PS3.4 J.3.3)
    assert sender == "PACS"
    assert information.TransactionUID == transaction
    assert information.RetrieveAETitle == "PACS"
    assert _pairs(information.ReferencedSOPSequence) == [(CT_IMAGE, site.stored[0])]
    failures = {str(item.ReferencedSOPInstanceUID): int(item.FailureReason)
                for item in information.FailedSOPSequence}
    assert failures == {missing: 0x0112, site.stored[1]: 0x0119}
    (record,) = site.commitments(transaction)
    assert (record.state, record.reported_via, record.succeeded, record.failed) == (
        "reported", "same-association", 1, 2)
    shown = {(c["sop_instance_uid"], c["committed"], c["failure_reason"])
             for c in site.api(f"/studies/{STUDY}/commitments")
             if c["transaction_uid"] == transaction}
    assert shown == {(site.stored[0], True, None), (site.stored[1], False, 0x0119)}


def test_all_committed_is_event_type_1_without_failures(site: Site) -> None:
    transaction = make_uid("commit", "tx", 2)
    action = commitment_request([(CT_IMAGE, uid) for uid in site.stored], transaction)

    status, reports = request_commitment(site.port, "WAITER", action, wait_for_report=True)

    assert status == 0x0000
    ((event_type, information, _),) = reports.received
    assert event_type == 1
    assert _pairs(information.ReferencedSOPSequence) == sorted(
        (CT_IMAGE, uid) for uid in site.stored)
    assert "FailedSOPSequence" not in information


def test_a_requestor_that_leaves_gets_the_report_at_its_registered_address(
        site: Site) -> None:
    transaction = make_uid("commit", "tx", 3)
    action = commitment_request([(CT_IMAGE, site.stored[2])], transaction)

    status, on_request = request_commitment(site.port, "LEAVER", action, wait_for_report=False)

    assert status == 0x0000
    received = until("the report at LEAVER's SCP", lambda: [
        r for r in site.receiver.received if r[1].TransactionUID == transaction])
    ((event_type, information, sender),) = received
    assert (event_type, sender) == (1, "PACS")
    assert _pairs(information.ReferencedSOPSequence) == [(CT_IMAGE, site.stored[2])]
    assert on_request.received == []
    record = until("the request reported", lambda: [
        r for r in site.commitments(transaction) if r.state == "reported"])[0]
    assert record.reported_via == "new-association"


def test_an_unregistered_requestor_is_left_pending_with_the_reason(site: Site) -> None:
    transaction = make_uid("commit", "tx", 4)
    action = commitment_request([(CT_IMAGE, site.stored[0])], transaction)

    status, _ = request_commitment(site.port, "STRANGER", action, wait_for_report=False)

    assert status == 0x0000
    record = until("the failed attempt recorded", lambda: [
        r for r in site.commitments(transaction) if r.attempts >= 1])[0]
    assert record.state == "pending"  # retried later by the background worker
    assert record.last_error == ("calling AE 'STRANGER' is not registered: the report has "
                                 "no address")
    assert record.next_attempt_at is not None


def test_malformed_requests_are_refused_with_the_reason(site: Site) -> None:
    no_transaction = commitment_request([(CT_IMAGE, site.stored[0])])
    del no_transaction.TransactionUID
    status, _ = request_commitment(site.port, "WAITER", no_transaction, wait_for_report=False)
    assert status == 0x0120  # Missing attribute

    bad_uid = commitment_request([(CT_IMAGE, "1.2.x")], make_uid("commit", "tx", 5))
    status, _ = request_commitment(site.port, "WAITER", bad_uid, wait_for_report=False)
    assert status == 0x0115  # Invalid argument value

    too_many = commitment_request(
        [(CT_IMAGE, f"1.2.3.{n}") for n in range(10_001)], make_uid("commit", "tx", 6))
    with association(site.port, "WAITER", "1.2.840.10008.1.20.1") as assoc:
        answer, _ = assoc.send_n_action(too_many, 1, "1.2.840.10008.1.20.1",
                                        "1.2.840.10008.1.20.1.1")
        wrong_action, _ = assoc.send_n_action(no_transaction, 2, "1.2.840.10008.1.20.1",
                                              "1.2.840.10008.1.20.1.1")
    assert int(answer.Status) == 0x0213  # Resource limitation
    assert "at most 10000" in answer.ErrorComment
    assert int(wrong_action.Status) == 0x0123  # No such action
    assert site.commitments(make_uid("commit", "tx", 6)) == []


def test_aes_without_the_store_service_are_refused(tmp_path: Path, database_url: str) -> None:
    server = PacsServer(data_dir=tmp_path / "data", database_url=database_url,
                        extra_args=["--dimse-access", "registered"]).start()
    try:
        for title, allow in (("VIEWER", "find"), ("CT1", "store")):
            added = server.cli("ae", "add", title, "--host", "127.0.0.1", "--allow", allow)
            assert added.returncode == 0, added.stderr
        action = commitment_request([(CT_IMAGE, "1.2.3.4")], make_uid("commit", "tx", 7))
        status, _ = request_commitment(server.dimse_port, "VIEWER", action,
                                       wait_for_report=False)
        assert status == 0x0124  # Refused: Not Authorized
        with association(server.dimse_port, "VIEWER", MPPS) as assoc:
            refused, _ = assoc.send_n_create(mpps_in_progress(study_instance_uid=STUDY), MPPS,
                                             make_uid("commit", "pps", 1))
        assert int(refused.Status) == 0x0124
        assert refused.ErrorComment == "calling AE 'VIEWER' may not report MPPS"
        with association(server.dimse_port, "CT1", MPPS) as assoc:
            created, _ = assoc.send_n_create(mpps_in_progress(study_instance_uid=STUDY), MPPS,
                                             make_uid("commit", "pps", 2))
        assert int(created.Status) == 0x0000
    finally:
        server.stop()
