"""The lean C-STORE-RQ decoder gives what pynetdicom's own decoding gives (PS3.7 9.3.1.1), and
never raises on bytes a peer makes up (property-based: random, truncated, mutated)."""

from __future__ import annotations

import functools
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config, dimse_messages
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode

from pacs.dimse.transport import decoding, fast

CT = "1.2.840.10008.5.1.4.1.1.2"
ODD_UID = "1.2.826.0.1.3680043.8.498.123"  # odd length: padded with a NUL
EVEN_UID = "1.2.826.0.1.3680043.8.498.1234"
PYNETDICOM_DECODE_MSG = DIMSEMessage.decode_msg if DIMSEMessage.decode_msg is not (
    fast._decode_msg) else fast._PYNETDICOM_DECODE_MSG
PRIMITIVE_FIELDS = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                    "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")


def _store(**fields: Any) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = fields.get("message_id", 7)
    primitive.AffectedSOPClassUID = fields.get("sop_class", CT)
    primitive.AffectedSOPInstanceUID = fields.get("sop_instance", ODD_UID)
    primitive.Priority = fields.get("priority", 0)
    if "originator" in fields:
        primitive.MoveOriginatorApplicationEntityTitle = fields["originator"]
        primitive.MoveOriginatorMessageID = fields.get("originator_id", 3)
    primitive.DataSet = BytesIO(fields.get("data", b"\x08\x00\x16\x00" * 100))
    return primitive


def _command(primitive: Any, message: Any) -> bytes:
    built = message()
    built.primitive_to_message(primitive)
    return bytes(encode(built.command_set, True, True) or b"")


def _p_data(primitive: Any, message: Any, max_pdu: int) -> list[Any]:
    built = message()
    built.primitive_to_message(primitive)
    return list(built.encode_msg(1, max_pdu))


def _decode(decode_msg: Any, pieces: list[Any]) -> Any:
    message = DIMSEMessage()
    assoc = SimpleNamespace(_accepted_cx={1: SimpleNamespace(transfer_syntax=[
        ExplicitVRLittleEndian])})
    done = [decode_msg(message, piece, assoc) for piece in pieces]
    assert done[-1] is True and not any(done[:-1])
    return message


@pytest.fixture
def lean(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard log handlers off (the lean path's condition), in-memory data sets."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)


@pytest.mark.parametrize("fields", [
    {},
    {"sop_instance": EVEN_UID, "priority": 2, "message_id": 65535},
    {"originator": "MOVESCU", "originator_id": 12},
    {"originator": "  LEADING", "priority": 1},
])
@pytest.mark.parametrize("max_pdu", [0, 16, 64])
@pytest.mark.usefixtures("lean")
def test_store_request_decodes_as_pynetdicom_does(fields: dict[str, Any], max_pdu: int) -> None:
    pieces = _p_data(_store(**fields), C_STORE_RQ, max_pdu)
    theirs = _decode(PYNETDICOM_DECODE_MSG, pieces)
    ours = _decode(fast._decode_msg, pieces)
    assert type(ours) is decoding.ReceivedStoreRequest and type(theirs) is C_STORE_RQ
    mine, reference = ours.message_to_primitive(), theirs.message_to_primitive()
    for field in PRIMITIVE_FIELDS:
        assert getattr(mine, field) == getattr(reference, field), field
    assert mine.DataSet.getvalue() == reference.DataSet.getvalue()
    assert mine._context_id == reference._context_id == 1
    # the pydicom command set is still there for whoever asks
    assert ours.command_set == theirs.command_set


def test_store_request_streams_to_the_same_file_as_pynetdicom(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile",
                        functools.partial(tempfile.NamedTemporaryFile, dir=tmp_path))
    monkeypatch.setattr(dimse_messages, "create_file_meta", create_file_meta)
    monkeypatch.setattr(dimse_messages, "write_file_meta_info", write_file_meta_info)
    pieces = _p_data(_store(originator="MOVESCU"), C_STORE_RQ, 32)
    files = []
    for decode_msg in (PYNETDICOM_DECODE_MSG, fast._decode_msg):
        message = _decode(decode_msg, pieces)
        message._data_set_file.close()
        primitive = message.message_to_primitive()
        assert primitive._dataset_path == message._data_set_path
        files.append(Path(message._data_set_path).read_bytes())
    assert files[0] == files[1]
    assert files[1].endswith(b"\x08\x00\x16\x00" * 100) and files[1][128:132] == b"DICM"


@pytest.mark.usefixtures("lean")
def test_other_messages_are_left_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    find = C_FIND()
    find.MessageID = 2
    find.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find.Priority = 0
    find.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    for primitive, message in ((echo, C_ECHO_RQ), (find, C_FIND_RQ)):
        assert decoding.store_request(_command(primitive, message)) is None
        decoded = _decode(fast._decode_msg, _p_data(primitive, message, 0))
        assert type(decoded) is message


def test_unexpected_store_requests_are_left_to_pynetdicom() -> None:
    raw = _command(_store(), C_STORE_RQ)
    assert decoding.store_request(raw) is not None
    assert decoding.store_request(raw[:-3]) is None  # truncated value
    assert decoding.store_request(raw + b"\x00\x00") is None  # truncated header
    unknown = struct.pack("<HHI", 0x0000, 0x0902, 2) + b"AB"  # Error Comment: not in a request
    assert decoding.store_request(raw + unknown) is None
    other_group = struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\x00"
    assert decoding.store_request(raw + other_group) is None
    # Message ID with a length other than 2
    message_id = struct.pack("<HHI", 0x0000, 0x0110, 2)
    at = raw.index(message_id)
    long_id = struct.pack("<HHI", 0x0000, 0x0110, 4) + raw[at + 8:at + 10] + b"\0\0"
    bad = raw[:at] + long_id + raw[at + 10:]
    assert decoding.store_request(bad) is None
    # a required element missing (Priority)
    priority = struct.pack("<HHI", 0x0000, 0x0700, 2)
    at = raw.index(priority)
    assert decoding.store_request(raw[:at] + raw[at + 10:]) is None


def test_lean_path_only_while_standard_log_handlers_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "standard")
    decoded = _decode(fast._decode_msg, _p_data(_store(), C_STORE_RQ, 0))
    assert type(decoded) is C_STORE_RQ  # pynetdicom's log handler looks classes up exactly


def test_a_request_without_data_set_is_complete_at_its_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    raw = bytearray(_command(_store(), C_STORE_RQ))
    data_set_type = struct.pack("<HHI", 0x0000, 0x0800, 2)
    at = raw.index(data_set_type) + 8
    raw[at:at + 2] = struct.pack("<H", 0x0101)
    elements = decoding.store_request(bytes(raw))
    assert elements is not None and not decoding.has_data_set(elements)
    piece = dimse_messages.P_DATA()
    piece.presentation_data_value_list.append((1, b"\x03" + bytes(raw)))
    message = DIMSEMessage()
    assert fast._decode_msg(message, piece, None) is True
    assert message._data_set_file is None


# -- properties: whatever the bytes, a clean "not mine" or pydicom's own reading ------------

_UID = st.from_regex(r"\A[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){1,6}\Z")
_AE = st.from_regex(r"\A[A-Z0-9_]{1,16}\Z")


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """The encoded command set of a valid C-STORE-RQ, as pynetdicom writes it."""
    fields: dict[str, Any] = {
        "message_id": draw(st.integers(0, 65535)),
        "sop_class": draw(_UID),
        "sop_instance": draw(_UID),
        "priority": draw(st.sampled_from([0, 1, 2])),
    }
    if draw(st.booleans()):
        fields["originator"] = draw(_AE)
        fields["originator_id"] = draw(st.integers(0, 65535))
    return _command(_store(**fields), C_STORE_RQ)


@st.composite
def _element_streams(draw: st.DrawFn) -> bytes:
    """Group 0000 elements, mostly the ones a C-STORE-RQ has, with values of any length."""
    numbers = st.sampled_from([0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000,
                               0x1030, 0x1031, 0x0902, 0x0120])
    parts = []
    for number, value in draw(st.lists(st.tuples(numbers, st.binary(max_size=24)),
                                       max_size=10)):
        if number == 0x0100 and draw(st.booleans()):
            value = b"\x01\x00"
        parts.append(struct.pack("<HHI", 0, number, len(value)) + value)
    return b"".join(parts)


def _primitive(make: Any) -> tuple[str, Any]:
    """("ok", the primitive's fields) or ("error", the exception's class)."""
    try:
        primitive = make()
    except (ValueError, TypeError) as error:
        return "error", type(error)
    return "ok", {name: getattr(primitive, name) for name in PRIMITIVE_FIELDS}


@contextmanager
def _validation_as_served() -> Iterator[None]:
    """pydicom's value validation off, as ``pacs serve`` runs it (``serve.open_services``)."""
    settings_ = pydicom.config.settings
    before = settings_.reading_validation_mode, settings_.writing_validation_mode
    settings_.reading_validation_mode = settings_.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings_.reading_validation_mode, settings_.writing_validation_mode = before


def _check_against_pydicom(raw: bytes) -> None:
    """The lean decoder never raises; when it accepts ``raw``, pydicom reads it too and both
    give the same C-STORE primitive (or the same refusal of a value)."""
    with _validation_as_served():
        _compare(raw)


def _compare(raw: bytes) -> None:
    elements = decoding.store_request(raw)
    if elements is None:
        return
    command_set = decode(BytesIO(raw), True, True)
    assert command_set.CommandField == 0x0001
    ours = C_STORE_RQ()
    ours.__class__ = decoding.ReceivedStoreRequest  # as fast._decode_msg does
    ours._elements, ours._raw, ours.context_id = elements, raw, 1
    theirs = C_STORE_RQ()
    theirs.command_set, theirs.context_id = command_set, 1
    assert _primitive(ours.message_to_primitive) == _primitive(theirs.message_to_primitive)
    assert decoding.has_data_set(elements) == (command_set.CommandDataSetType != 0x0101)


_PROPERTIES = settings(max_examples=150, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow])


@_PROPERTIES
@given(_requests())
def test_valid_store_requests_are_read_as_pydicom_reads_them(raw: bytes) -> None:
    assert decoding.store_request(raw) is not None
    _check_against_pydicom(raw)


@_PROPERTIES
@given(_requests(), st.data())
def test_truncated_store_requests_never_raise(raw: bytes, data: st.DataObject) -> None:
    _check_against_pydicom(raw[:data.draw(st.integers(0, len(raw) - 1))])


@_PROPERTIES
@given(_requests(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                             min_size=1, max_size=4))
def test_mutated_store_requests_never_raise(raw: bytes, flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(raw)
    for at, value in flips:
        mutated[at % len(mutated)] = value
    _check_against_pydicom(bytes(mutated))


@_PROPERTIES
@given(st.one_of(st.binary(max_size=300), _element_streams()))
def test_any_bytes_are_refused_cleanly_or_read_as_pydicom_reads_them(raw: bytes) -> None:
    _check_against_pydicom(raw)
