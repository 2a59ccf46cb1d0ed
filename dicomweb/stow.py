"""STOW-RS, Store Instances (PS3.18 10.5; 6.6 in editions before 2019).

``POST /studies`` and ``POST /studies/{study}`` take ``multipart/related;
type="application/dicom"``: every part is one Part 10 instance, stored through the ingest
service exactly as a C-STORE is. The answer is the Store Instances Response Module (PS3.18
10.5.3) as one ``application/dicom+json`` object (or ``application/dicom+xml`` when Accept
prefers it): ReferencedSOPSequence for the stored instances, FailedSOPSequence for the others
(their reasons in words in a ``Warning`` header), and the status:

- 200 every instance stored (or already there: a re-send is a success, as in Orthanc);
- 202 some stored, some failed; 409 none stored, the body still lists why;
- 400 a malformed body (no boundary, no part, ended before its closing delimiter);
- 406 an Accept that allows neither DICOM JSON nor DICOM XML (before reading the body);
- 413 a body over ``max_request_bytes`` (by Content-Length before reading, or while reading);
- 503 a Content-Length that would bring the disk below the store's reserve (before reading),
  or a disk that fills while receiving;
- 415 not ``multipart/related``, or its ``type`` is not ``application/dicom``.

Parts of the metadata-and-bulk-data form (``application/dicom+json``, ``application/
octet-stream``, ...) are not supported: each such part fails with 0xC000.

The body is read from the ASGI stream and each part is spooled to a file in the store's
temporary area as it arrives (memory: one chunk, one delimiter and one write buffer). Parts
are handed to the ingest service only once the closing delimiter has been read, so an
interrupted, malformed or oversize body stores nothing at all and leaves no file behind: the
client can simply send it again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicomweb.accept import parse_accept
from dicomweb.dicom_xml import to_native_xml
from dicomweb.multipart_reader import (
    MalformedMultipart,
    MediaType,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
)
from dicomweb.urls import base_url
from pacs.http.auth import ANONYMOUS, PrincipalDep, requires
from pacs.http.context import Web, WebDep
from pacs.http.errors import HttpError
from pacs.services import metrics
from pacs.services.auth import Principal, Role
from pacs.services.errors import (
    InvalidInstance,
    NotDicom,
    OutOfResources,
    PacsError,
    SopClassMismatch,
    StudyMismatch,
)
from pacs.services.ingest import Expected, Incoming, IngestService, Origin, StoreOutcome
from pacs.services.part10 import as_part10, is_part10

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
ANSWER_TYPES = (DICOM_JSON, DICOM_XML, "application/json", "application/xml")
MULTIPART_RELATED = "multipart/related"
# Parts stored at once, each by its own thread: a store mostly waits on fsync and the index
# commit, which overlap (300 small CT in POSTs of 50: about 110/s one at a time, 270-330/s
# with 8 on this machine's SQLite and PostgreSQL). The answer keeps the parts' order.
STORE_WORKERS = 8
_FLUSH_BYTES = 1 << 20  # a part's content is written to its file in pieces of about this
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WARNINGS_MAX = 10  # failures told in the Warning header; the body lists them all


# Attributes of the Store Instances Response Module (PS3.18 10.5.3), as Annex F JSON keys.
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values of a Store Instances Response (PS3.18 10.5.3,
    the C-STORE statuses of PS3.4 B.2.3)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # PS3.18 defines no code for an instance of another study than the target's; this is
    # dcm4chee-arc's (a "cannot understand" Cxxx code), where Orthanc ignores the instance.
    STUDY_INSTANCE_UID_MISMATCH = 0xC409


# The one error → failure reason table; most specific first.
FAILURES: tuple[tuple[type[PacsError], FailureReason], ...] = (
    (StudyMismatch, FailureReason.STUDY_INSTANCE_UID_MISMATCH),
    (SopClassMismatch, FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (OutOfResources, FailureReason.OUT_OF_RESOURCES),
    (InvalidInstance, FailureReason.CANNOT_UNDERSTAND),
)


def failure_reason(error: PacsError) -> FailureReason:
    for kind, reason in FAILURES:
        if isinstance(error, kind):
            return reason
    return FailureReason.PROCESSING_FAILURE


_REQUEST_BODY = {
    "required": True,
    "description": "One DICOM Part 10 instance per part (PS3.18 10.5.1).",
    "content": {
        f'{MULTIPART_RELATED}; type="{DICOM}"': {"schema": {"type": "string", "format": "binary"}}
    },
}
_ANSWER: dict[str, Any] = {"content": {DICOM_JSON: {}, DICOM_XML: {}}}
_OPENAPI: dict[str, Any] = {
    "requestBody": _REQUEST_BODY,
    "responses": {
        "200": {"description": "every instance stored", **_ANSWER},
        "202": {"description": "some instances stored, others failed", **_ANSWER},
        "400": {"description": "malformed or truncated multipart body"},
        "409": {"description": "no instance stored; FailedSOPSequence says why", **_ANSWER},
        "406": {"description": f"Accept allows neither {DICOM_JSON} nor {DICOM_XML}"},
        "413": {"description": "request body larger than the server accepts"},
        "415": {"description": f'not {MULTIPART_RELATED}; type="{DICOM}"'},
        "503": {"description": "no room on the store's disk for the body"},
    },
}


router = APIRouter(tags=["STOW-RS"], dependencies=[requires(Role.UPLOADER)])


@router.post(
    "/studies", name="stow_studies", summary="Store instances (STOW-RS)",
    response_class=Response, openapi_extra=_OPENAPI,
)
async def store_instances(request: Request, web: WebDep, principal: PrincipalDep) -> Response:
    return await _store(web, request, principal, study=None)


@router.post(
    "/studies/{study}", summary="Store instances of one study (STOW-RS)",
    response_class=Response, openapi_extra=_OPENAPI,
)
async def store_study_instances(study: str, request: Request, web: WebDep,
                                principal: PrincipalDep) -> Response:
    return await _store(web, request, principal, study=study)


async def _store(web: Web, request: Request, principal: Principal, *,
                 study: str | None) -> Response:
    answer_type = _answer_type(request)
    boundary = _boundary(request, web.options.max_request_bytes)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        await run_in_threadpool(web.ingest.check_room, int(length))  # else 503 before reading
    parts = await _receive(request, boundary, web)
    try:
        origin = Origin(protocol="dicomweb", address=_client(request),
                        user=None if principal is ANONYMOUS else principal.actor)
        started = time.perf_counter()
        results = await run_in_threadpool(_store_parts, web.ingest, parts, origin, study)
        _count(results, time.perf_counter() - started)
    finally:
        for part in parts:
            part.discard()
    studies_url = f"{base_url(request)}/studies"
    return _answer(results, studies_url, study, answer_type)


def _count(results: list[StoreOutcome | _Failure], seconds: float) -> None:
    """Each instance in the metrics: its outcome and Failure Reason (0000: stored), and the
    time the request's stores took together."""
    for result in results:
        if isinstance(result, StoreOutcome):
            metrics.store("dicomweb", result.status.value, 0, seconds)
        else:
            metrics.store("dicomweb", metrics.FAILED, int(result.reason), seconds)


# -- the request ----------------------------------------------------------------------------
def _answer_type(request: Request) -> str:
    """The response's media type from Accept (PS3.18 10.5.2): DICOM JSON unless XML is
    preferred; 406 before the body is read when neither is acceptable."""
    for media_range in parse_accept(request.headers.get("accept")):
        for media_type in ANSWER_TYPES:
            if media_range.matches(media_type):
                return media_type
    raise HttpError(406, f"the answer is {DICOM_JSON} or {DICOM_XML}; Accept allows neither")


def _boundary(request: Request, max_bytes: int) -> str:
    """The multipart boundary, once the headers show a body this route accepts."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HttpError(413, f"request body of {length} bytes: the limit is {max_bytes}")
    media = MediaType.parse(request.headers.get("content-type", ""))
    if media.type != MULTIPART_RELATED:
        raise HttpError(415, f'expected {MULTIPART_RELATED}; type="{DICOM}", not '
                             f"{media.type or 'no Content-Type'}")
    root = media.parameters.get("type")
    if root is not None and MediaType.parse(root).type != DICOM:
        raise HttpError(415, f"only {DICOM} parts are supported, not type={root} "
                             "(the metadata and bulk data form is not)")
    boundary = media.parameters.get("boundary")
    if not boundary:
        raise HttpError(400, f"{MULTIPART_RELATED} without a boundary parameter")
    return boundary


def _client(request: Request) -> str | None:
    if request.client is None:
        return None
    return f"{request.client.host}:{request.client.port}"


@dataclass
class _Part:
    """One part of the body: spooled to ``path`` if it is DICOM, else why it is not."""

    number: int
    path: Path | None = None
    digest: tuple[str, int] | None = None
    refused: str | None = None

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass
class _Spool:
    """The file of the part being read, written in pieces of about ``_FLUSH_BYTES``."""

    part: _Part
    file: BinaryIO
    hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0

    def add(self, data: bytes) -> bool:
        """Queue ``data``; True when enough is queued to be written."""
        self.pending.append(data)
        self.pending_bytes += len(data)
        return self.pending_bytes >= _FLUSH_BYTES

    def write(self) -> None:
        """Write the queued pieces (blocking: called in a worker thread)."""
        for piece in self.pending:
            self.file.write(piece)
            self.hash.update(piece)
            self.size += len(piece)
        self.pending, self.pending_bytes = [], 0

    def finish(self) -> None:
        self.write()
        self.file.close()
        self.part.digest = (self.hash.hexdigest(), self.size)


async def _receive(request: Request, boundary: str, web: Web) -> list[_Part]:
    """Read the whole body, spooling each DICOM part to its own temporary file.

    Raises :class:`HttpError` (400 malformed or truncated, 413 too large) or
    :class:`OutOfResources` (disk full: 503) after removing every file it wrote; a client that
    goes away gets no answer and leaves nothing either.
    """
    limit = web.options.max_request_bytes
    temp_dir = web.ingest.temp_dir()
    parts: list[_Part] = []
    spool: _Spool | None = None
    received = 0
    try:
        reader = MultipartReader(boundary)
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HttpError(413, f"request body over the limit of {limit} bytes")
            for event in reader.feed(chunk):
                if isinstance(event, PartStart):
                    part = _Part(number=len(parts) + 1, refused=_refusal(event))
                    parts.append(part)
                    if part.refused is None:
                        spool = await run_in_threadpool(_open_spool, part, temp_dir)
                elif isinstance(event, PartData):
                    if spool is not None and spool.add(event.data):
                        await run_in_threadpool(spool.write)
                elif isinstance(event, PartEnd) and spool is not None:
                    await run_in_threadpool(spool.finish)
                    spool = None
        reader.close()
        return parts
    except MalformedMultipart as exc:
        _discard(parts, spool)
        raise HttpError(400, str(exc)) from exc
    except OSError as exc:
        _discard(parts, spool)
        if exc.errno in _NO_SPACE:
            raise OutOfResources(f"no space left to receive the request: {exc.strerror}"
                                 ) from exc
        raise
    except ClientDisconnect:
        _discard(parts, spool)
        log.info("STOW-RS client went away after %d bytes: nothing stored", received)
        raise
    except BaseException:
        _discard(parts, spool)
        raise


def _refusal(start: PartStart) -> str | None:
    """Why a part is not taken (None: it is a DICOM instance)."""
    media = start.content_type
    if media is None or media.type == DICOM:
        return None  # a part without Content-Type is of the root type (RFC 2387 3.1)
    return f"part of type {media.type}: only {DICOM} parts are supported"


def _open_spool(part: _Part, temp_dir: Path) -> _Spool:
    fd, name = tempfile.mkstemp(dir=temp_dir, prefix="stow-", suffix=".part")
    part.path = Path(name)
    return _Spool(part=part, file=os.fdopen(fd, "wb"))


def _discard(parts: list[_Part], spool: _Spool | None) -> None:
    if spool is not None:
        spool.file.close()
    for part in parts:
        part.discard()


# -- storing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Failure:
    reason: FailureReason
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


def _store_parts(
    ingest: IngestService, parts: list[_Part], origin: Origin, study: str | None
) -> list[StoreOutcome | _Failure]:
    """Store the parts (blocking: runs in a worker thread); the results in the parts' order.
    The ingest service reads up to :data:`STORE_WORKERS` of them at once and indexes them
    together, each succeeding or failing on its own; two parts of the same new study (or the
    same instance twice) meet in the index's ``ON CONFLICT`` upserts."""
    expected = Expected(study_instance_uid=study) if study is not None else None
    results: list[StoreOutcome | _Failure | None] = [None] * len(parts)
    taken: list[tuple[int, Incoming]] = []
    for n, part in enumerate(parts):
        if part.refused is not None or part.path is None:
            results[n] = _Failure(FailureReason.CANNOT_UNDERSTAND,
                                  f"part {part.number}: {part.refused}")
            continue
        try:
            taken.append((n, _incoming(part.path, part.digest)))
        except Exception as error:  # noqa: BLE001 (told in the part's answer)
            results[n] = _failure(part, error, origin)
    answers = ingest.store_many([incoming for _, incoming in taken], origin, expected,
                                workers=STORE_WORKERS)
    for (n, _), answer in zip(taken, answers, strict=True):
        results[n] = answer if isinstance(answer, StoreOutcome) else _failure(
            parts[n], answer, origin
        )
    return [result for result in results if result is not None]


def _failure(part: _Part, error: Exception, origin: Origin) -> _Failure:
    said = f"part {part.number}"
    if not isinstance(error, PacsError):  # one part's bug must not lose the others' answers
        log.error("STOW-RS %s from %s: unexpected failure: %r", said, origin.address, error)
        return _Failure(FailureReason.PROCESSING_FAILURE,
                        f"{said}: processing failure ({type(error).__name__})")
    reason = failure_reason(error)
    log.warning("STOW-RS %s from %s failed (0x%04X): %s", said, origin.address, reason, error)
    if isinstance(error, StudyMismatch):
        return _Failure(reason, f"{said}: {error}", error.sop_class_uid, error.sop_instance_uid)
    return _Failure(reason, f"{said}: {error}")


def _incoming(path: Path, digest: tuple[str, int] | None) -> Incoming:
    """The part as received, or, when it is a bare data set (no preamble and ``DICM``: what
    dicomweb-client sends for a Dataset built in memory), wrapped in a Part 10 header."""
    with path.open("rb") as source:
        head = source.read(132)
    if is_part10(head):
        return Incoming.received_file(path, digest)
    if path.stat().st_size > BARE_DATA_SET_LIMIT:
        raise NotDicom("not DICOM: no Part 10 header (DICM), and too large to wrap in one")
    return Incoming.data(as_part10(path.read_bytes()))


BARE_DATA_SET_LIMIT = 512 << 20  # bytes: a bare data set is wrapped in memory


# -- the answer -----------------------------------------------------------------------------
def _answer(
    results: list[StoreOutcome | _Failure], studies_url: str, study: str | None,
    media_type: str,
) -> Response:
    """The Store Instances Response Module (PS3.18 10.5.3) in DICOM JSON (Annex F) or the
    Native DICOM Model XML (PS3.19)."""
    stored = [r for r in results if isinstance(r, StoreOutcome)]
    failed = [r for r in results if isinstance(r, _Failure)]
    body: dict[str, Any] = {}
    studies = {s.study_instance_uid for s in stored}
    target = study if study is not None else (next(iter(studies)) if len(studies) == 1 else None)
    if stored and target is not None:
        body[RETRIEVE_URL] = _element("UR", f"{studies_url}/{target}")
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_failed_item(f) for f in failed]}
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = {
            "vr": "SQ", "Value": [_stored_item(s, studies_url) for s in stored]
        }
    status = 200 if not failed else 202 if stored else 409
    headers = {"Warning": _warning(failed)} if failed else None
    if media_type.endswith("xml"):
        return Response(to_native_xml(body), status_code=status, media_type=media_type,
                         headers=headers)
    return JSONResponse(body, status_code=status, media_type=media_type, headers=headers)


def _warning(failed: list[_Failure]) -> str:
    """The failures in words (the Failure Reason is only a code): ``299 pacs "..."`` values
    (RFC 7234 5.5), printable ASCII only."""
    values = []
    for failure in failed[:_WARNINGS_MAX]:
        text = "".join(c if " " <= c <= "~" and c not in '"\\' else " " for c in failure.message)
        values.append(f'299 pacs "{text[:300]}"')
    if len(failed) > _WARNINGS_MAX:
        values.append(f'299 pacs "{len(failed) - _WARNINGS_MAX} more failures"')
    return ", ".join(values)


def _stored_item(outcome: StoreOutcome, studies_url: str) -> dict[str, Any]:
    url = (f"{studies_url}/{outcome.study_instance_uid}/series/"
           f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}")
    return {
        REFERENCED_SOP_CLASS_UID: _element("UI", outcome.sop_class_uid),
        REFERENCED_SOP_INSTANCE_UID: _element("UI", outcome.sop_instance_uid),
        RETRIEVE_URL: _element("UR", url),
    }


def _failed_item(failure: _Failure) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if failure.sop_class_uid:
        item[REFERENCED_SOP_CLASS_UID] = _element("UI", failure.sop_class_uid)
    if failure.sop_instance_uid:
        item[REFERENCED_SOP_INSTANCE_UID] = _element("UI", failure.sop_instance_uid)
    item[FAILURE_REASON] = _element("US", int(failure.reason))
    return item


def _element(vr: str, value: str | int) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}
