"""The streaming multipart/related reader, alone: any chunking gives the same parts."""

from __future__ import annotations

import pytest

from dicomweb.multipart_reader import (
    MAX_HEADER_BYTES,
    MalformedMultipart,
    MediaType,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    Truncated,
)

BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"


def _body(parts: list[bytes], *, boundary: str = BOUNDARY, preamble: bytes = b"",
          epilogue: bytes = b"", content_type: str = "application/dicom") -> bytes:
    out = [preamble]
    for index, content in enumerate(parts):
        out.append(b"\r\n" if index or preamble else b"")
        out.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        out.append(content)
    out.append(f"\r\n--{boundary}--".encode())
    out.append(epilogue)
    return b"".join(out)


def _read(body: bytes, chunk_size: int, boundary: str = BOUNDARY
          ) -> list[tuple[dict[str, str], bytes]]:
    """(headers, content) per part, feeding ``body`` in chunks of ``chunk_size``."""
    reader = MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    current: list[bytes] = []
    headers: dict[str, str] | None = None
    for start in range(0, len(body), chunk_size):
        for event in reader.feed(body[start:start + chunk_size]):
            if isinstance(event, PartStart):
                assert headers is None
                headers, current = event.headers, []
            elif isinstance(event, PartData):
                assert headers is not None and event.data
                current.append(event.data)
            else:
                assert isinstance(event, PartEnd) and headers is not None
                parts.append((headers, b"".join(current)))
                headers = None
    reader.close()
    assert reader.complete
    return parts


# Contents that look like pieces of a delimiter, to catch a boundary split across chunks.
CONTENTS = [
    b"DICM" * 100,
    b"\r\n--" + BOUNDARY[:-1].encode() + b"X\r\n-",
    b"",
    bytes(range(256)) * 3 + b"\r\n",
]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 41, 64, 1000, 1 << 20])
def test_any_chunking_gives_the_same_parts(chunk_size: int) -> None:
    body = _body(CONTENTS, preamble=b"This is a preamble.\r\n", epilogue=b"\r\nbye\r\n")

    parts = _read(body, chunk_size)

    assert [content for _, content in parts] == CONTENTS
    assert all(headers == {"content-type": "application/dicom"} for headers, _ in parts)


def test_body_starting_with_crlf_as_dicomweb_client_sends_it() -> None:
    body = b"\r\n" + _body([b"one", b"two"])

    assert [content for _, content in _read(body, 5)] == [b"one", b"two"]


def test_delimiter_line_may_have_transport_padding_and_closing_crlf() -> None:
    body = (f"--{BOUNDARY} \t\r\nContent-Type: application/dicom\r\n\r\nA"
            f"\r\n--{BOUNDARY}--\r\n").encode()

    assert _read(body, 3) == [({"content-type": "application/dicom"}, b"A")]


def test_headers_per_part_case_insensitive_and_folded() -> None:
    body = (
        f"--{BOUNDARY}\r\nCONTENT-TYPE: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        f"\r\nContent-ID: <a@b>\r\nX-Long: one\r\n two\r\n\r\nA\r\n"
        f"--{BOUNDARY}\r\n\r\nB\r\n--{BOUNDARY}--"
    ).encode()

    parts = _read(body, 4)

    assert parts[0][0] == {
        "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        "content-id": "<a@b>",
        "x-long": "one two",
    }
    assert parts[1] == ({}, b"B")


def test_part_start_content_type_is_parsed() -> None:
    start = PartStart({"content-type": 'application/dicom; transfer-syntax="1.2.840.10008.1.2"'})

    assert start.content_type == MediaType(
        "application/dicom", {"transfer-syntax": "1.2.840.10008.1.2"}
    )
    assert PartStart({}).content_type is None


@pytest.mark.parametrize("cut", [10, 60, 90, -20, -3, -1])
def test_body_without_its_closing_delimiter_is_truncated(cut: int) -> None:
    body = _body([b"x" * 50, b"y" * 50])[:cut]
    reader = MultipartReader(BOUNDARY)
    reader.feed(body)

    with pytest.raises(Truncated, match="without its closing delimiter"):
        reader.close()
    assert not reader.complete


def test_empty_body_is_truncated() -> None:
    reader = MultipartReader(BOUNDARY)
    assert reader.feed(b"") == []
    with pytest.raises(Truncated, match="before its first delimiter"):
        reader.close()


def test_body_with_no_part_is_malformed() -> None:
    with pytest.raises(MalformedMultipart, match="no parts"):
        MultipartReader(BOUNDARY).feed(f"--{BOUNDARY}--\r\n".encode())


def test_text_after_a_delimiter_is_malformed() -> None:
    body = f"--{BOUNDARY}junk\r\n\r\nA\r\n--{BOUNDARY}--".encode()

    with pytest.raises(MalformedMultipart, match="follows a boundary"):
        MultipartReader(BOUNDARY).feed(body)


def test_header_line_without_colon_is_malformed() -> None:
    body = f"--{BOUNDARY}\r\nnot a header\r\n\r\nA\r\n--{BOUNDARY}--".encode()

    with pytest.raises(MalformedMultipart, match="not a header line"):
        MultipartReader(BOUNDARY).feed(body)


def test_endless_headers_are_refused_without_buffering_them_all() -> None:
    reader = MultipartReader(BOUNDARY)
    reader.feed(f"--{BOUNDARY}\r\nX-A: ".encode())

    with pytest.raises(MalformedMultipart, match="headers exceed"):
        for _ in range(MAX_HEADER_BYTES // 1000 + 2):
            reader.feed(b"a" * 1000)


def test_memory_held_back_is_one_delimiter_not_the_part() -> None:
    reader = MultipartReader(BOUNDARY)
    reader.feed(f"--{BOUNDARY}\r\n\r\n".encode())
    given = 0
    for _ in range(100):
        events = reader.feed(b"z" * 10_000)
        given += sum(len(e.data) for e in events if isinstance(e, PartData))

    assert 1_000_000 - given < len(BOUNDARY) + 4


def test_epilogue_and_anything_after_the_close_are_ignored() -> None:
    reader = MultipartReader(BOUNDARY)
    events = reader.feed(_body([b"A"]) + b"\r\n--" + BOUNDARY.encode() + b"\r\n\r\nB")

    assert [type(e) for e in events] == [PartStart, PartData, PartEnd]
    assert reader.feed(b"more") == []
    reader.close()


@pytest.mark.parametrize("boundary", ["", "x" * 71, "é"])
def test_invalid_boundary(boundary: str) -> None:
    with pytest.raises(MalformedMultipart):
        MultipartReader(boundary)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc',
         MediaType("multipart/related", {"type": "application/dicom", "boundary": "abc"})),
        ("Multipart/Related;type=application/dicom;boundary=\"a;b c\"",
         MediaType("multipart/related", {"type": "application/dicom", "boundary": "a;b c"})),
        ('multipart/related; boundary="q\\"x"',
         MediaType("multipart/related", {"boundary": 'q"x'})),
        ("application/dicom", MediaType("application/dicom")),
        ("", MediaType("")),
        ("text/plain; junk; charset=utf-8", MediaType("text/plain", {"charset": "utf-8"})),
    ],
)
def test_media_type_parse(value: str, expected: MediaType) -> None:
    assert MediaType.parse(value) == expected
