"""Receive files made ahead of time, and the File Meta Information written from bytes."""

from __future__ import annotations

import os
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import create_file_meta

from pacs.dimse.transport import receive_files
from pacs.dimse.transport.receive_files import ReceiveFiles, file_meta, write_file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_file_meta_equals_pynetdicoms() -> None:
    values = {"sop_class_uid": CT, "sop_instance_uid": "1.2.3.4.5",
              "transfer_syntax": "1.2.840.10008.1.2.4.90"}
    ours, theirs = BytesIO(), BytesIO()
    write_file_meta(ours, file_meta(**values))
    write_file_meta_info(theirs, create_file_meta(**values))  # type: ignore[arg-type]
    assert ours.getvalue() == theirs.getvalue()


def test_receive_files_are_ready_and_writable(tmp_path: Path) -> None:
    files = ReceiveFiles(tmp_path, ready=4)
    handles = [files(delete=False, mode="wb", suffix=".dcm") for _ in range(10)]  # beyond stock
    for number, handle in enumerate(handles):
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta(handle, file_meta(sop_class_uid=CT, sop_instance_uid=f"1.2.{number}",
                                          transfer_syntax="1.2.840.10008.1.2.1"))
        handle.file.flush()
        handle.close()
    names = {handle.name for handle in handles}
    assert len(names) == 10 and all(Path(name).parent == tmp_path for name in names)
    meta = pydicom.dcmread(handles[3].name, force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_receive_files_hash_what_they_write(tmp_path: Path) -> None:
    import hashlib

    files = ReceiveFiles(tmp_path, ready=2)
    handle = files(delete=False, mode="wb", suffix=".dcm")
    for chunk in (b"\x00" * 128, b"DICM", b"x" * 100_001):
        handle.write(chunk)
    written = files.written(Path(handle.name))
    handle.close()
    content = Path(handle.name).read_bytes()
    assert written == (hashlib.sha256(content).hexdigest(), len(content))
    assert files.written(Path(handle.name)) is None  # handed out once


def test_the_stock_is_refilled_in_bursts_not_after_every_file(tmp_path: Path) -> None:
    from tests.support.wait import until

    files = ReceiveFiles(tmp_path, ready=8)
    try:
        until("a full stock", lambda: len(files._stock) == 8)
        files().close()  # 7 left: above half, the maker is not woken
        time.sleep(0.3)  # (it would have made one within microseconds)
        assert len(files._stock) == 7
        for _ in range(3):
            files().close()  # 4 left: half, so it refills
        until("the stock refilled", lambda: len(files._stock) == 8)
    finally:
        files.stop()


def test_a_large_data_set_is_sent_to_disk_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 256 kB written, the pages written since the last time are handed to the kernel's
    writeback (not waited for), from the file itself: the later sync finds them written."""
    started: list[tuple[int, int, bytes]] = []

    def start_writeback(fd: int, offset: int, count: int) -> None:
        on_disk = os.pread(fd, count, offset)
        started.append((offset, count, on_disk))

    monkeypatch.setattr(receive_files, "start_writeback", start_writeback)
    files = ReceiveFiles(tmp_path, ready=2)
    handle = files(delete=False, mode="wb", suffix=".dcm")
    chunks = [bytes([n]) * 16_372 for n in range(40)]  # 40 PDUs of a 0.65 MB data set
    for chunk in chunks:
        handle.write(chunk)
    handle.close()
    data = b"".join(chunks)
    assert [(offset, count) for offset, count, _ in started] == [(0, 17 * 16_372),
                                                                 (17 * 16_372, 17 * 16_372)]
    assert all(on_disk == data[offset:offset + count] for offset, count, on_disk in started)
    assert Path(handle.name).read_bytes() == data


def test_a_small_data_set_is_left_to_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    monkeypatch.setattr(receive_files, "start_writeback",
                        lambda fd, offset, count: started.append(count))
    files = ReceiveFiles(tmp_path, ready=2)
    handle = files(delete=False, mode="wb", suffix=".dcm")
    handle.write(b"x" * 200_000)
    handle.close()
    assert started == []
