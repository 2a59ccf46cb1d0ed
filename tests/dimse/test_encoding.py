"""The lean encoders give the bytes pydicom/pynetdicom would (PS3.5 7.1, PS3.7 6.3.1)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RSP, C_MOVE_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode

from pacs.dimse.transport import encoding

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def _pynetdicom_command(primitive: Any, message: Any) -> bytes:
    built = message()
    built.primitive_to_message(primitive)
    return bytes(encode(built.command_set, True, True) or b"")


def test_c_store_response_command_set_equals_pynetdicom() -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"
    primitive.Status = 0xC000
    primitive.ErrorComment = "truncated at byte 123"
    ours = encoding.command_set(
        sop_class_uid=CT, command_field=encoding.C_STORE_RSP, message_id_responded_to=7,
        status=0xC000, sop_instance_uid="1.2.3.4.5", error_comment="truncated at byte 123",
    )
    assert ours == _pynetdicom_command(primitive, C_STORE_RSP)


def test_c_find_pending_command_set_equals_pynetdicom() -> None:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 65535
    primitive.AffectedSOPClassUID = FIND
    primitive.Status = 0xFF00
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00")
    ours = encoding.command_set(
        sop_class_uid=FIND, command_field=encoding.C_FIND_RSP, message_id_responded_to=65535,
        status=0xFF00, data_set=True,
    )
    assert ours == _pynetdicom_command(primitive, C_FIND_RSP)


def test_c_move_final_command_set_with_counts_equals_pynetdicom() -> None:
    primitive = C_MOVE()
    primitive.MessageIDBeingRespondedTo = 3
    primitive.AffectedSOPClassUID = MOVE
    primitive.Status = 0xB000
    primitive.NumberOfCompletedSuboperations = 297
    primitive.NumberOfFailedSuboperations = 3
    primitive.NumberOfWarningSuboperations = 0
    primitive.Identifier = BytesIO(b"\x08\x00\x58\x11")
    ours = encoding.command_set(
        sop_class_uid=MOVE, command_field=encoding.C_MOVE_RSP, message_id_responded_to=3,
        status=0xB000, data_set=True, counts=(None, 297, 3, 0),
    )
    assert ours == _pynetdicom_command(primitive, C_MOVE_RSP)


VALUES: list[tuple[str, Any]] = [
    ("QueryRetrieveLevel", "STUDY"),
    ("PatientName", "Müller^Jürgen"),  # odd byte length in UTF-8
    ("PatientID", "ABC"),
    ("StudyInstanceUID", "1.2.3"),  # odd: padded with NUL
    ("StudyDate", "20240115"),
    ("ModalitiesInStudy", ["CT", "MR"]),
    ("NumberOfStudyRelatedInstances", 300),
    ("PatientWeight", 72.5),
    ("Rows", 512),
    ("ReferringPhysicianName", None),
    ("RequestAttributesSequence", []),
    ("RetrieveAETitle", "PACS"),
]


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_identifier_equals_pydicom(implicit_vr: bool) -> None:
    ours = encoding.identifier(VALUES, implicit_vr=implicit_vr, character_set="ISO_IR 192")
    reference = Dataset()
    reference.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in VALUES:
        setattr(reference, keyword, value)
    expected = encode(reference, implicit_vr, True)
    assert ours == expected
    back = decode(BytesIO(ours), implicit_vr, True)
    assert str(back.PatientName) == "Müller^Jürgen"
    assert list(back.ModalitiesInStudy) == ["CT", "MR"]
    assert back.Rows == 512 and float(back.PatientWeight) == 72.5


def test_identifier_ascii_and_empty_character_set() -> None:
    ours = encoding.identifier([("PatientID", "X1")], implicit_vr=False, character_set="")
    back = decode(BytesIO(ours), False, True)
    assert "SpecificCharacterSet" in back and back.SpecificCharacterSet in ("", None)
    assert back.PatientID == "X1"


@pytest.mark.parametrize("max_pdu", [0, 16, 16384])
def test_p_data_fragments_and_control_headers(max_pdu: int) -> None:
    command, data = b"C" * 40, b"D" * 25
    primitives = encoding.p_data(5, command, data, max_pdu)
    pdvs = [p.presentation_data_value_list[0] for p in primitives]
    assert all(context == 5 for context, _ in pdvs)
    assert b"".join(v[1:] for _, v in pdvs if v[0] & 1) == command
    assert b"".join(v[1:] for _, v in pdvs if not v[0] & 1) == data
    commands = [v[0] for _, v in pdvs if v[0] & 1]
    datas = [v[0] for _, v in pdvs if not v[0] & 1]
    assert commands[-1] == 0x03 and all(h == 0x01 for h in commands[:-1])
    assert datas[-1] == 0x02 and all(h == 0x00 for h in datas[:-1])
    if max_pdu:
        assert all(len(v) <= max_pdu - 6 + 1 for _, v in pdvs)
