"""pacs.dimse.tuning reaches into pynetdicom internals: fail loudly if they move."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import _config, association
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import VerificationServiceClass
from pynetdicom.transport import AssociationSocket

from pacs.dimse import tuning
from pacs.dimse.contexts import QUERY_RETRIEVE, scp_contexts, transfer_syntaxes
from tests.support import dcmtk
from tests.support.server import PacsServer


def test_pynetdicom_internals_we_tune_still_exist() -> None:
    assert pynetdicom.__version__.startswith("3.0")
    assert hasattr(_config, "STORE_RECV_CHUNKED_DATASET")
    assert hasattr(_config, "STORE_SEND_CHUNKED_DATASET")
    assert "_run_loop_delay" in DULServiceProvider.__init__.__code__.co_names
    assert "socket" in AssociationSocket.__init__.__code__.co_names
    assert "_data_set_file" in DIMSEMessage.__init__.__code__.co_names
    assert "to_provider_queue" in DULServiceProvider.__init__.__code__.co_names
    assert "msg_queue" in DIMSEServiceProvider.__init__.__code__.co_names
    assert "_is_paused" in Association.__init__.__code__.co_names
    assert "_reactor_checkpoint" in Association.__init__.__code__.co_names
    for method in ("_get_valid_context", "_check_received_status", "_handle_no_response"):
        assert callable(getattr(Association, method))
    assert callable(getattr(association, "uid_to_service_class"))  # noqa: B009
    from pynetdicom import dul

    assert dul.time is not None and "sleep" in DULServiceProvider.run_reactor.__code__.co_names
    assert callable(DULServiceProvider.send_pdu)
    # our acceptor reactor is pynetdicom's loop with another wait: it uses what that loop uses
    theirs = set(Association._run_reactor.__code__.co_names)
    ours = set(tuning._acceptor_reactor.__code__.co_names) - {"_wait_for_message", "log"}
    assert ours <= theirs | {"error", "_idle_timer", "restart"}, ours - theirs
    assert callable(Association(pynetdicom.AE(), "acceptor").dul._idle_timer.restart)
    # our PDU reader stands in for pynetdicom's (tuning 12.): the same events, queues, decoder
    theirs = set(DULServiceProvider._read_pdu_data.__code__.co_names)
    assert {"event_queue", "_recv_pdu", "_decode_pdu", "socket"} <= theirs
    assert callable(DULServiceProvider._decode_pdu)
    assert "to_user_queue" in DULServiceProvider.__init__.__code__.co_names
    assert "current_state" in DULServiceProvider._is_transport_event.__code__.co_names
    # the request handler we extend (tuning 13.) builds the association, then starts it
    from pynetdicom.transport import RequestHandler

    assert {"_create_association", "start"} <= set(RequestHandler.handle.__code__.co_names)
    # DICOM TLS (tls.py): pynetdicom's readiness check sees decrypted bytes OpenSSL holds, and
    # its server handshakes in the accepting thread only when given an ssl_context (ours never)
    assert "pending" in AssociationSocket.ready.fget.__code__.co_names
    from pynetdicom.transport import AssociationServer

    assert "ssl_context" in AssociationServer.get_request.__code__.co_names
    # our decode_msg is pynetdicom's loop with a lean C-STORE-RQ branch (tuning 11.)
    original = tuning._PYNETDICOM_DECODE_MSG or DIMSEMessage.decode_msg
    theirs = set(original.__code__.co_names)
    lean = {"LOG_HANDLER_LEVEL", "ReceivedStoreRequest", "_elements", "_raw", "decoding",
            "dimse_messages", "encoding", "NO_DATA_SET", "getattr", "getvalue", "has_data_set",
            "pacs.dimse", "pynetdicom", "pynetdicom.dsutils", "pynetdicom.pdu_primitives",
            "store_request", "text"}
    assert set(tuning._decode_msg.__code__.co_names) - lean <= theirs
    assert hasattr(_config, "LOG_HANDLER_LEVEL")


def test_standard_log_handlers_only_when_their_lines_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "standard")
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        tuning.skip_unheard_log_handlers()
        assert _config.LOG_HANDLER_LEVEL == "standard"
        logger.setLevel(logging.WARNING)
        tuning.skip_unheard_log_handlers()
        assert _config.LOG_HANDLER_LEVEL == "none"
    finally:
        logger.setLevel(level)


def test_service_classes_are_ours_once_installed() -> None:
    from pacs.dimse import qr

    qr.install(None)
    chosen = getattr(association, "uid_to_service_class")  # noqa: B009
    assert chosen("1.2.840.10008.5.1.4.1.2.2.1") is qr.QueryRetrieveSCP  # Study Root FIND
    assert chosen("1.2.840.10008.5.1.4.1.1.2") is qr.StorageSCP  # CT Image Storage
    assert chosen("1.2.840.10008.1.1") is VerificationServiceClass


def test_contexts_cover_every_storage_class_and_transfer_syntax_and_copy_cheaply() -> None:
    contexts = scp_contexts()
    syntaxes = transfer_syntaxes()

    storage = contexts[1 + len(QUERY_RETRIEVE):]
    assert len(contexts) == 1 + len(QUERY_RETRIEVE) + len(pynetdicom.AllStoragePresentationContexts)
    assert all(cx.transfer_syntax == syntaxes for cx in storage)
    # a C-GET requestor's SCP role for the storage classes is accepted (PS3.7 D.3.3.4)
    assert all(cx.scu_role and cx.scp_role for cx in storage)
    assert [str(cx.abstract_syntax) for cx in contexts[1:1 + len(QUERY_RETRIEVE)]] == list(
        QUERY_RETRIEVE
    )
    for needed in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                   "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
                   "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                   "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"):
        assert needed in syntaxes
    assert syntaxes.index("1.2.840.10008.1.2.4.91") > syntaxes.index("1.2.840.10008.1.2.4.90")
    copied = copy.deepcopy(contexts)
    assert copied is not contexts and copied[5] is contexts[5]


def test_associations_leave_no_descriptors_behind(tmp_path: Path, sqlite_url: str) -> None:
    """Each acceptor association gets a wake-up pipe (tuning 10.): it is closed with it."""
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--dimse-processes", "1"]).start()
    try:
        assert server.process is not None
        descriptors = Path(f"/proc/{server.process.pid}/fd")
        dcmtk.echoscu(server.dimse_port)
        before = len(list(descriptors.iterdir()))
        for _ in range(30):
            assert dcmtk.echoscu(server.dimse_port).returncode == 0
        deadline = time.monotonic() + 10
        while len(list(descriptors.iterdir())) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(descriptors.iterdir())) <= before
    finally:
        server.stop()
