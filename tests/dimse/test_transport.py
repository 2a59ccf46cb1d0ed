"""The DIMSE transports: the fast path's hold on pynetdicom, and stock's lack of one.

The fast transport (``pacs/dimse/transport/fast.py``) replaces, copies or relies on pynetdicom
3.0.4 internals; a release that changes any of them must fail here, by name, before it fails
in production. The stock transport must leave pynetdicom exactly as published.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import subprocess
import sys
import time
import tomllib
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

from pacs.dimse.contexts import (
    N_SERVICES,
    QUERY_RETRIEVE,
    WORKLIST,
    scp_contexts,
    transfer_syntaxes,
)
from pacs.dimse.transport import Transport
from pacs.dimse.transport import fast as fast_path
from pacs.dimse.transport.fast import UPSTREAM, FastTransport
from tests.support import dcmtk
from tests.support.server import PacsServer

REPO = Path(__file__).resolve().parents[2]


_HASHES = """
import hashlib, importlib, inspect, json, sys
def upstream(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)
        return found
print(json.dumps({name: hashlib.sha256(inspect.getsource(upstream(name)).encode()).hexdigest()[:16]
                  for name in sys.argv[1:]}))
"""


@pytest.fixture(scope="module")
def upstream_hashes() -> dict[str, str]:
    """The hashes of pynetdicom's functions as installed, read in a fresh interpreter (this
    one may have the fast path installed over some of them)."""
    done = subprocess.run([sys.executable, "-c", _HASHES, *UPSTREAM], capture_output=True,
                          text=True, timeout=60, check=True)
    return dict(json.loads(done.stdout))


def test_pynetdicom_is_pinned_to_the_release_the_fast_path_was_written_for() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("pynetdicom")]
    assert pins == [f"pynetdicom=={pynetdicom.__version__}"], pins


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_source_is_the_one_the_fast_path_was_written_against(
    name: str, upstream_hashes: dict[str, str],
) -> None:
    """A changed function means the items relying on it must be read again against it."""
    expected, items = UPSTREAM[name]
    assert upstream_hashes[name] == expected, (
        f"{name} changed upstream: re-read fast.py item(s) {items} against it")


def test_attributes_the_fast_path_uses_still_exist() -> None:
    assert hasattr(_config, "STORE_RECV_CHUNKED_DATASET")
    assert hasattr(_config, "STORE_SEND_CHUNKED_DATASET")
    assert hasattr(_config, "LOG_HANDLER_LEVEL")
    assert "_run_loop_delay" in DULServiceProvider.__init__.__code__.co_names
    assert "socket" in AssociationSocket.__init__.__code__.co_names
    assert "_data_set_file" in DIMSEMessage.__init__.__code__.co_names
    assert "to_provider_queue" in DULServiceProvider.__init__.__code__.co_names
    assert "to_user_queue" in DULServiceProvider.__init__.__code__.co_names
    assert "msg_queue" in DIMSEServiceProvider.__init__.__code__.co_names
    assert "_is_paused" in Association.__init__.__code__.co_names
    assert "_reactor_checkpoint" in Association.__init__.__code__.co_names
    assert callable(Association(pynetdicom.AE(), "acceptor").dul._idle_timer.restart)
    from pynetdicom import dul

    assert dul.time is time  # (10.) the DUL's clock is the module we stand in for
    # DICOM TLS (tls.py): pynetdicom's readiness check sees decrypted bytes OpenSSL holds, and
    # its server handshakes in the accepting thread only when given an ssl_context (ours never)
    assert "pending" in AssociationSocket.ready.fget.__code__.co_names


def test_the_fast_paths_copies_use_only_what_the_originals_use() -> None:
    """The copied loops (8., 11.) differ from pynetdicom's only where the docstrings say."""
    theirs = set(Association._run_reactor.__code__.co_names)
    ours = set(fast_path._acceptor_reactor.__code__.co_names) - {
        "_wait_for_message", "log", "REACTOR_IDLE_WAIT_S"}
    assert ours <= theirs | {"error", "_idle_timer", "restart"}, ours - theirs
    original = fast_path._PYNETDICOM_DECODE_MSG or DIMSEMessage.decode_msg
    theirs = set(original.__code__.co_names)
    lean = {"LOG_HANDLER_LEVEL", "ReceivedStoreRequest", "_elements", "_raw", "decoding",
            "dimse_messages", "encoding", "NO_DATA_SET", "getattr", "getvalue", "has_data_set",
            "pacs.dimse.transport", "pynetdicom", "pynetdicom.dsutils",
            "pynetdicom.pdu_primitives", "store_request", "text"}
    assert set(fast_path._decode_msg.__code__.co_names) - lean <= theirs


def test_standard_log_handlers_only_when_their_lines_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "standard")
    # (restored afterwards: this process's pynetdicom SCUs in other tests need the defaults)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", _config.STORE_SEND_CHUNKED_DATASET)
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        Transport().install()
        assert _config.LOG_HANDLER_LEVEL == "standard"
        logger.setLevel(logging.WARNING)
        Transport().install()
        assert _config.LOG_HANDLER_LEVEL == "none"
    finally:
        logger.setLevel(level)


def test_service_classes_are_ours_once_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs.dimse import qr

    # (undone afterwards: other tests of this process need pynetdicom as published)
    monkeypatch.setattr(association, "uid_to_service_class", association.uid_to_service_class)
    qr.install(None, FastTransport())
    chosen = getattr(association, "uid_to_service_class")  # noqa: B009
    assert chosen("1.2.840.10008.5.1.4.1.2.2.1") is qr.QueryRetrieveSCP  # Study Root FIND
    assert chosen("1.2.840.10008.5.1.4.1.1.2") is qr.StorageSCP  # CT Image Storage
    assert chosen("1.2.840.10008.1.1") is VerificationServiceClass


# In a fresh interpreter: every function and class attribute of pynetdicom's modules, by id,
# before anything of pacs is imported, after pacs's modules are imported, and after the
# transport is installed and a DIMSE server started (what ``pacs serve`` does).
_SNAPSHOTS = """
import json, sys, types, pkgutil, importlib, tempfile
from pathlib import Path
import pynetdicom
for info in pkgutil.iter_modules(pynetdicom.__path__, "pynetdicom."):
    if not info.name.endswith(("apps", "benchmarks", "tests", "__main__")):
        importlib.import_module(info.name)
def snapshot():
    seen = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("pynetdicom"):
            for attr, value in list(vars(module).items()):
                seen[f"{name}.{attr}"] = id(value)
                if isinstance(value, type) and value.__module__ == name:
                    for key, member in list(vars(value).items()):
                        seen[f"{name}.{attr}.{key}"] = id(member)
    return seen
def changed(before, after):
    return sorted(k for k in before if after.get(k) != before[k])
bare = snapshot()
import pacs.serve, pacs.cli, pacs.dimse.server, pacs.dimse.qr, pacs.dimse.retrieve
import pacs.dimse.sender, pacs.dimse.transport.fast
imported = snapshot()
from pacs.settings import Settings
from pacs.serve import open_services, _dimse_server
settings = Settings(data_dir=Path(sys.argv[1]), dimse_transport=sys.argv[2], dimse_port=0)
with open_services(settings) as services:
    server = _dimse_server(settings, services)
    server.start()
    started = snapshot()
    server.stop()
print(json.dumps({"import": changed(bare, imported), "serve": changed(bare, started)}))
"""


def _changes(tmp_path: Path, transport: str) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", _SNAPSHOTS, str(tmp_path / transport), transport],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_stock_leaves_pynetdicom_as_published_and_nothing_patches_at_import(
    tmp_path: Path,
) -> None:
    stock = _changes(tmp_path, "stock")
    assert stock["import"] == []
    # documented settings only (pynetdicom._config), nothing replaced
    assert all(name.startswith("pynetdicom._config.") for name in stock["serve"]), stock
    fast = _changes(tmp_path, "fast")
    assert fast["import"] == []
    # the check can fail: the fast transport's replacements are seen
    assert "pynetdicom.association.uid_to_service_class" in fast["serve"]
    assert "pynetdicom.dimse_messages.DIMSEMessage.decode_msg" in fast["serve"]


def test_contexts_cover_every_storage_class_and_transfer_syntax_and_copy_cheaply() -> None:
    contexts = scp_contexts()
    syntaxes = transfer_syntaxes()

    queries = len(QUERY_RETRIEVE) + len(WORKLIST) + len(N_SERVICES)
    storage = contexts[1 + queries:]
    assert len(contexts) == 1 + queries + len(pynetdicom.AllStoragePresentationContexts)
    assert all(cx.transfer_syntax == syntaxes for cx in storage)
    # a C-GET requestor's SCP role for the storage classes is accepted (PS3.7 D.3.3.4)
    assert all(cx.scu_role and cx.scp_role for cx in storage)
    assert [str(cx.abstract_syntax) for cx in contexts[1:1 + queries]] == [
        *QUERY_RETRIEVE, *WORKLIST, *N_SERVICES]
    for needed in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                   "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
                   "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                   "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"):
        assert needed in syntaxes
    assert syntaxes.index("1.2.840.10008.1.2.4.91") > syntaxes.index("1.2.840.10008.1.2.4.90")
    copied = copy.deepcopy(contexts)
    assert copied is not contexts and copied[5] is contexts[5]


def test_associations_leave_no_descriptors_behind(tmp_path: Path, sqlite_url: str) -> None:
    """Each acceptor association of the fast transport gets a wake-up pipe (10.): it is
    closed with it."""
    server = PacsServer(data_dir=tmp_path / "data", database_url=sqlite_url,
                        extra_args=["--dimse-processes", "1"]).start()
    try:
        assert server.process is not None
        descriptors = Path(f"/proc/{server.process.pid}/fd")

        def connections() -> int:
            """Sockets and pipes (a file opened once and kept, say the metrics' own, is not
            what an association could leave behind)."""
            kinds = []
            for fd in descriptors.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    kinds.append(os.readlink(fd))
            return sum(kind.startswith(("socket:", "pipe:")) for kind in kinds)

        dcmtk.echoscu(server.dimse_port)
        before = connections()
        for _ in range(30):
            assert dcmtk.echoscu(server.dimse_port).returncode == 0
        deadline = time.monotonic() + 10
        while connections() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connections() <= before
    finally:
        server.stop()
