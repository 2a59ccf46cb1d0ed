"""HL7 v2 acknowledgements (HL7 v2.5.1 chapter 2, 2.9.2 original mode; 2.15.8 ERR): the ACK
to a message mirrors its header (sending and receiving application and facility swapped,
MSA-2 its control id) and says AA (accepted), AE (error in the content: a missing or bad
field, an unknown order) or AR (rejected: not parseable, a message type not served, the
archive unavailable), with the reason in MSA-3 and an ERR segment (HL7 table 0357 codes).

The header is read from the raw first segment, not from a parsed message, so that a message
that cannot be parsed, or whose frame is too large to read whole, is answered all the same.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from enum import StrEnum

MAX_FIELD = 200  # characters of a mirrored header field
MAX_TEXT = 400  # characters of an error text


class AckCode(StrEnum):
    """MSA-1 (HL7 table 0008), original mode."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(StrEnum):
    """ERR-3 condition codes (HL7 table 0357)."""

    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE = "102"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT = "201"
    UNKNOWN_KEY = "204"
    DUPLICATE_KEY = "205"
    INTERNAL = "207"


_ERROR_NAMES = {
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT: "Unsupported event code",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY: "Duplicate key identifier",
    ErrorCode.INTERNAL: "Application internal error",
}


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK mirrors, as they were sent (still HL7-escaped)."""

    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    message_type: str = ""  # MSH-9
    control_id: str = ""  # MSH-10
    processing_id: str = "P"  # MSH-11
    version: str = "2.5.1"  # MSH-12

    @classmethod
    def read(cls, head: str) -> Header:
        """The header of a message from its first characters (the MSH segment, at least
        in part); empty fields for what is not there."""
        first = head.replace("\n", "\r").split("\r", 1)[0]
        if not first.startswith("MSH") or len(first) < 4:
            return cls()
        fields = first.split(first[3])  # MSH-1 is the separator itself

        def field(number: int) -> str:  # MSH-n is fields[n - 1]
            return fields[number - 1][:MAX_FIELD] if len(fields) >= number else ""

        return cls(field(3), field(4), field(5), field(6), field(9), field(10),
                   field(11) or "P", field(12) or "2.5.1")

    @property
    def application(self) -> str:
        """The sending application's name (MSH-3's first component), for the audit trail."""
        return self.sending_application.split("^", 1)[0]

    @property
    def trigger(self) -> str:
        """The trigger event (MSH-9.2: O01, O23)."""
        parts = self.message_type.split("^")
        return parts[1] if len(parts) > 1 else ""


def escape(text: str) -> str:
    """Text for a field: the delimiters escaped (HL7 v2.5.1 2.7.4), no segment breaks."""
    text = text.replace("\\", "\\E\\")
    for char, code in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(char, code)
    return " ".join(text.split())[:MAX_TEXT]


def acknowledge(header: Header, code: AckCode, text: str = "",
                error: ErrorCode | None = None, location: str = "") -> bytes:
    """The ACK to the message of ``header`` (without MLLP framing), in UTF-8."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    trigger = header.trigger
    segments = [
        "|".join(["MSH", "^~\\&", header.receiving_application, header.receiving_facility,
                  header.sending_application, header.sending_facility, now, "",
                  f"ACK^{trigger}^ACK" if trigger else "ACK",
                  f"ACK{secrets.token_hex(8).upper()}", header.processing_id, header.version]),
        "|".join(["MSA", code.value, header.control_id] + ([escape(text)] if text else [])),
    ]
    if code is not AckCode.ACCEPT:
        condition = error or ErrorCode.INTERNAL
        segments.append("|".join([
            "ERR", "", location, f"{condition.value}^{_ERROR_NAMES[condition]}^HL70357", "E",
            "", "", "", escape(text)]))
    return ("\r".join(segments) + "\r").encode("utf-8")
