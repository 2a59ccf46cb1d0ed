"""Rewrite patient/study attributes of a stored Part 10 file (QA corrections).

The file is parsed whole, the attributes set, and written back in its own transfer syntax
(encapsulated pixel data and private tags untouched). A value that needs more than the file's
character set switches it to UTF-8 (``ISO_IR 192``), every other text value decoded first so
that nothing is left in the old encoding.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import pydicom
from pydicom.errors import InvalidDicomError

from pacs.services.errors import InvalidInstance

_UTF8 = "ISO_IR 192"


def rewrite_attributes(
    data: bytes, changes: Mapping[str, str | None]
) -> tuple[bytes, dict[str, str]]:
    """``data`` with each keyword of ``changes`` set (None or '' empties it), and the values
    the file had before."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, EOFError, ValueError) as error:
        raise InvalidInstance(f"stored file cannot be read: {error}") from error
    before = {keyword: str(ds.get(keyword, "") or "") for keyword in changes}
    needs_utf8 = any(value and not value.isascii() for value in changes.values())
    charset = ds.get("SpecificCharacterSet")
    if needs_utf8 and (not charset or str(charset).strip() != _UTF8):
        ds.decode()
        ds.SpecificCharacterSet = _UTF8
    for keyword, value in changes.items():
        setattr(ds, keyword, value or "")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), before
