"""The streaming multipart/related reader, alone: any chunking gives the same parts."""

from __future__ import annotations

import itertools
import string
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dicomweb.multipart_reader import (
    MAX_BOUNDARY_CHARS,
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


@pytest.mark.parametrize("boundary", ["", "x" * (MAX_BOUNDARY_CHARS + 1), "é"])
def test_invalid_boundary(boundary: str) -> None:
    with pytest.raises(MalformedMultipart):
        MultipartReader(boundary)


def test_boundary_longer_than_rfc_2046_as_orthanc_sends_it() -> None:
    """Orthanc's DICOMweb plugin: ``boundary=<uuid>-<uuid>``, 73 characters (RFC 2046 says
    at most 70; senders do not all care)."""
    boundary = f"{uuid.uuid4()}-{uuid.uuid4()}"
    assert len(boundary) == 73

    parts = _read(_body([b"one", b"two"], boundary=boundary), 7, boundary)

    assert [content for _, content in parts] == [b"one", b"two"]
    longest = "b" * MAX_BOUNDARY_CHARS
    assert _read(_body([b"x"], boundary=longest), 100, longest) == [
        ({"content-type": "application/dicom"}, b"x")]


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


# -- properties (hypothesis): any body, any chunking ------------------------------------------
# Boundary characters of RFC 2046 5.1.1 (bchars; a space only inside).
_BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
_TOKEN = string.ascii_letters + string.digits + "-"
_FIELD_VALUE = string.ascii_letters + string.digits + ' ;=/."-_'
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def boundaries(draw: st.DrawFn) -> str:
    """Mostly short, sometimes up to the maximum the reader takes."""
    size = draw(st.one_of(st.integers(1, 80), st.integers(1, MAX_BOUNDARY_CHARS)))
    inner = draw(st.text(_BCHARS + " ", min_size=size - 1, max_size=size - 1))
    return inner + draw(st.sampled_from(_BCHARS))


@st.composite
def contents(draw: st.DrawFn, delimiter: bytes) -> bytes:
    """Bytes that often hold pieces of the delimiter (CR, LF, dashes, a prefix of it), never
    the whole of it: what a split across chunks would get wrong."""
    pieces = draw(st.lists(st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--"]),
        st.integers(1, len(delimiter) - 1).map(lambda n: delimiter[:n]),
    ), max_size=12))
    content = b"".join(pieces)
    assume(delimiter not in content)
    return content


@st.composite
def header_blocks(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.text(_TOKEN, min_size=1, max_size=20), max_size=4,
                          unique_by=str.lower))
    return {name: draw(st.text(_FIELD_VALUE, max_size=40)).strip() for name in names}


@dataclass(frozen=True)
class _Multipart:
    boundary: str
    parts: list[tuple[dict[str, str], bytes]]
    body: bytes
    closed_at: int  # where the closing delimiter ends: any shorter prefix is truncated


@st.composite
def multiparts(draw: st.DrawFn) -> _Multipart:
    boundary = draw(boundaries())
    delimiter = b"\r\n--" + boundary.encode()
    preamble = draw(contents(delimiter))
    assume(delimiter not in b"\r\n" + preamble)  # the body reads as if after a CRLF
    parts = [(draw(header_blocks()), draw(contents(delimiter)))
             for _ in range(draw(st.integers(1, 4)))]
    padding = st.text(" \t", max_size=3).map(str.encode)
    out = [preamble + b"\r\n" if preamble else b""]
    for index, (headers, content) in enumerate(parts):
        out.append(b"\r\n" if index else b"")
        out.append(f"--{boundary}".encode() + draw(padding) + b"\r\n")
        out.extend(f"{name}: {value}\r\n".encode() for name, value in headers.items())
        out.append(b"\r\n" + content)
    out.append(f"\r\n--{boundary}--".encode())
    closed_at = sum(len(piece) for piece in out)
    out.append(draw(st.one_of(st.just(b""), st.binary(max_size=64))))  # the epilogue
    return _Multipart(boundary, parts, b"".join(out), closed_at)


def _chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted({cut % (len(body) + 1) for cut in cuts}), len(body)]
    return [body[start:end] for start, end in itertools.pairwise(edges)]


def _feed_all(reader: MultipartReader, chunks: list[bytes]) -> list[tuple[dict[str, str], bytes]]:
    """Feed every chunk; the parts read, checking the order of events and the memory the
    reader keeps between chunks (one delimiter or one header block, never a part)."""
    bound = max(MAX_HEADER_BYTES, MAX_BOUNDARY_CHARS + 4)
    parts: list[tuple[dict[str, str], bytes]] = []
    headers: dict[str, str] | None = None
    current: list[bytes] = []
    for chunk in chunks:
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                assert headers is None
                headers, current = event.headers, []
            elif isinstance(event, PartData):
                assert headers is not None and event.data
                current.append(event.data)
            else:
                assert headers is not None
                parts.append((headers, b"".join(current)))
                headers = None
        assert reader.held_back <= bound
    return parts


@PROPERTY_SETTINGS
@given(multipart=multiparts(), cuts=st.lists(st.integers(0, 1 << 16), max_size=30))
def test_property_any_body_and_chunking_round_trips(multipart: _Multipart,
                                                    cuts: list[int]) -> None:
    reader = MultipartReader(multipart.boundary)

    parts = _feed_all(reader, _chunked(multipart.body, cuts))
    reader.close()

    assert reader.complete
    assert parts == [({name.lower(): value for name, value in headers.items()}, content)
                     for headers, content in multipart.parts]


@PROPERTY_SETTINGS
@given(multipart=multiparts(), data=st.data(), cuts=st.lists(st.integers(0, 1 << 16),
                                                              max_size=30))
def test_property_a_truncated_body_raises_truncated(multipart: _Multipart, data: st.DataObject,
                                                    cuts: list[int]) -> None:
    body = multipart.body[:data.draw(st.integers(0, multipart.closed_at - 1), label="cut")]
    reader = MultipartReader(multipart.boundary)

    _feed_all(reader, _chunked(body, cuts))  # a prefix of a valid body is not malformed
    with pytest.raises(Truncated):
        reader.close()
    assert not reader.complete


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid body with bytes flipped, inserted or cut out, or plain noise."""
    multipart = draw(multiparts())
    body = bytearray(multipart.body)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if kind == "flip" and at < len(body):
            body[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            body[at:at] = draw(st.sampled_from(
                [b"\r\n", b"--", b"\r\n--" + multipart.boundary.encode(), b":", b"\r\n\r\n"]))
        elif kind == "delete":
            del body[at:at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del body[at:]
    noise = st.binary(max_size=2000).map(bytearray)
    return multipart.boundary, bytes(draw(st.one_of(st.just(body), noise)))


@PROPERTY_SETTINGS
@given(case=damaged(), cuts=st.lists(st.integers(0, 1 << 16), max_size=30))
def test_property_a_damaged_body_raises_only_the_readers_error(case: tuple[str, bytes],
                                                               cuts: list[int]) -> None:
    """Damage may leave a body that still parses; otherwise the only error is the reader's
    own (:class:`MalformedMultipart`, of which :class:`Truncated` is one), whatever the
    chunking, and memory stays bounded on the way."""
    boundary, body = case
    reader = MultipartReader(boundary)
    try:
        _feed_all(reader, _chunked(body, cuts))
        reader.close()
    except MalformedMultipart:
        assert not reader.complete
    else:
        assert reader.complete


@PROPERTY_SETTINGS
@given(boundary=boundaries(), filler=st.sampled_from([b"a", b"-", b"\r\n-", b"\r"]),
       state=st.sampled_from(["preamble", "delimiter line", "headers", "content"]))
def test_property_memory_stays_bounded_on_an_endless_body(boundary: str, filler: bytes,
                                                          state: str) -> None:
    """A body that never ends its preamble, delimiter line, header block or part: the reader
    keeps a bounded amount (or refuses), never the body."""
    start = {"preamble": b"", "delimiter line": f"--{boundary}".encode(),
             "headers": f"--{boundary}\r\nX-A: ".encode(),
             "content": f"--{boundary}\r\n\r\n".encode()}[state]
    reader = MultipartReader(boundary)
    try:
        _feed_all(reader, [start] + [filler * 4096] * 16)
    except MalformedMultipart as error:
        assert state in ("delimiter line", "headers"), error
