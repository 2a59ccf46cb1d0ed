"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9) routes: parse, one service call, format.

Accept negotiation for instances (PS3.18 8.7.3): ``multipart/related; type="application/dicom"``
with ``transfer-syntax=*`` gives the stored files unchanged; without a transfer-syntax
parameter, Explicit VR Little Endian (1.2.840.10008.1.2.1, the standard's default: compressed
instances are decoded); an explicit uncompressed UID decodes to it, a compressed one is served
only by instances stored in it. Ranges are tried by q-value, client order among equals; none
acceptable → 406. A single instance may be asked as a bare ``application/dicom`` body.
Stored files are streamed in chunks with a ``Content-Length`` when every part is sent as stored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from dicomweb import multipart, rendering
from dicomweb.accept import MediaRange, parse_accept
from dicomweb.metadata import with_base
from dicomweb.urls import base_url
from dicomweb.wado_services import WadoDep, WadoServices
from pacs.http.auth import Who, requires
from pacs.http.errors import HttpError
from pacs.services.auth import Role
from pacs.services.errors import CannotTranscode, DecoderBusy, NotFound
from pacs.services.frames import OCTET_STREAM, FramePart, Offer
from pacs.services.wado import InstanceFile
from storage.query import RetrieveItem

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
_MULTIPART = "multipart/related"
_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"

Responses = dict[int | str, dict[str, Any]]
_DICOM_RESPONSES: Responses = {200: {"content": {_MULTIPART: {}, DICOM: {}}}}
_JSON_RESPONSES: Responses = {
    200: {"content": {DICOM_JSON: {}}}, 304: {"description": "Not Modified (ETag)"}
}
_MULTIPART_RESPONSES: Responses = {200: {"content": {_MULTIPART: {}}}}
_IMAGE_RESPONSES: Responses = {200: {"content": {rendering.JPEG: {}, rendering.PNG: {}}}}

Viewport = Annotated[str | None, Query(description="vw,vh: fit inside this many pixels")]
WindowParam = Annotated[
    str | None, Query(description="center,width[,linear|linear_exact|sigmoid]")
]
Quality = Annotated[str | None, Query(description="JPEG quality 1-100")]


# -- Accept ----------------------------------------------------------------------------------
def dicom_offers(ranges: Sequence[MediaRange]) -> list[tuple[bool, str]]:
    """(multipart?, transfer syntax or ``*``) for each acceptable range, in order."""
    offers: list[tuple[bool, str]] = []
    for media in ranges:
        syntax = media.transfer_syntax or ExplicitVRLittleEndian
        if media.media_type == _MULTIPART:
            if media.params.get("type", DICOM) in (DICOM, "*/*"):
                offers.append((True, syntax))
        elif media.media_type == DICOM:
            offers.append((False, syntax))
        elif media.matches(_MULTIPART):
            offers.append((True, ExplicitVRLittleEndian))
    return offers


def frame_offers(ranges: Sequence[MediaRange]) -> list[tuple[bool, Offer]]:
    """(multipart?, offer) for frames and bulk data; the default type is octet-stream."""
    offers: list[tuple[bool, Offer]] = []
    for media in ranges:
        if media.media_type == _MULTIPART:
            kind = media.params.get("type", OCTET_STREAM)
            kind = OCTET_STREAM if kind in ("*/*", "*") else kind
            offers.append((True, Offer(kind, media.transfer_syntax)))
        elif media.media_type in ("*/*", "*", "multipart/*"):
            offers.append((True, Offer(OCTET_STREAM, media.transfer_syntax)))
        elif media.media_type != DICOM_JSON and "/" in media.media_type:
            offers.append((False, Offer(media.media_type, media.transfer_syntax)))
    return offers


def accept_of(request: Request) -> str | None:
    """The ``accept`` query parameter when given (PS3.18 8.3.3.1: it overrides the header, for
    clients that cannot set headers), else the Accept header."""
    return request.query_params.get("accept") or request.headers.get("accept")


def _not_acceptable(accept: str | None, what: str) -> HttpError:
    return HttpError(406, f"Accept {accept!r}: {what}")


def _image_type(request: Request) -> str:
    for media in parse_accept(accept_of(request)):
        if media.media_type == _MULTIPART:  # rendered series/study: the parts' type
            kind = media.params.get("type", rendering.JPEG)
            if kind in rendering.MEDIA_TYPES:
                return kind
            continue
        for media_type in rendering.MEDIA_TYPES:
            if media.matches(media_type):
                return media_type
    raise _not_acceptable(accept_of(request), "rendered images are image/jpeg or "
                          "image/png")


# -- formatting ------------------------------------------------------------------------------
def _primed(chunks: Iterator[bytes], count: int = 2) -> Iterator[bytes]:
    """Reads the first chunks now, so that an error in the first instance (a decoder failure,
    a missing file) is an HTTP error answer rather than a broken stream."""
    head = []
    for chunk in chunks:
        head.append(chunk)
        if len(head) == count:
            break
    return chain(head, chunks)


def _multipart_response(parts: Sequence[multipart.Part], part_type: str) -> Response:
    boundary = multipart.new_boundary()
    headers = {}
    length = multipart.total_length(boundary, parts)
    if length is not None:
        headers["Content-Length"] = str(length)
    return StreamingResponse(
        _coalesced(_primed(multipart.stream(boundary, parts))),
        media_type=multipart.content_type(boundary, part_type),
        headers=headers,
    )


_SEND_AT_LEAST = 4 << 20  # bytes handed to the event loop at a time


def _coalesced(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Chunks gathered into pieces of a few MB: each piece costs a hand-over from the worker
    thread to the event loop, and a CT study is thousands of small heads and file chunks."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= _SEND_AT_LEAST:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _instance_parts(files: Iterable[InstanceFile], base: str) -> list[multipart.Part]:
    return [
        multipart.Part(
            content_type=f"{DICOM}; transfer-syntax={f.transfer_syntax}",
            chunks=f.chunks(),
            size=f.size,
            location=f"{base}/studies/{f.item.study_instance_uid}/series/"
            f"{f.item.series_instance_uid}/instances/{f.item.sop_instance_uid}",
        )
        for f in files
    ]


def _frame_response(frames: Sequence[FramePart], multipart_wanted: bool) -> Response:
    if not multipart_wanted:
        (frame,) = frames
        return Response(
            frame.data, media_type=f"{frame.media_type}; transfer-syntax={frame.transfer_syntax}"
        )
    parts = [
        multipart.Part(
            f"{f.media_type}; transfer-syntax={f.transfer_syntax}", (f.data,), len(f.data)
        )
        for f in frames
    ]
    return _multipart_response(parts, frames[0].media_type if frames else OCTET_STREAM)


def _etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or f'"{etag}"' in candidates


def _rendering(
    media_type: str, viewport: str | None, window: str | None, quality: str | None,
    thumbnail: bool,
) -> rendering.Rendering:
    try:
        size = rendering.parse_viewport(viewport)
        return rendering.Rendering(
            media_type=media_type,
            window=rendering.parse_window(window),
            viewport=rendering.thumbnail_viewport(size) if thumbnail else size,
            quality=rendering.parse_quality(quality),
        )
    except rendering.RenderingError as error:
        raise HttpError(400, str(error)) from None


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` (PS3.18 10.4.1.1.4): positive frame numbers; 400 when malformed."""
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise HttpError(400, f"frame list {text!r}: frames are numbers from 1, comma separated")
        numbers.append(int(piece))
    return numbers


def parse_bulk_path(text: str) -> tuple[int, ...]:
    """``7FE00010`` or ``00540016/0/00181072``: tags (8 hex digits) and item indexes."""
    steps: list[int] = []
    for depth, piece in enumerate(text.strip("/").split("/")):
        try:
            if depth % 2 == 0:
                if len(piece) != 8:
                    raise ValueError(piece)
                steps.append(int(piece, 16))
            else:
                steps.append(int(piece))
        except ValueError:
            raise HttpError(404, f"no bulk data at {text!r}") from None
    if len(steps) % 2 == 0:
        raise HttpError(404, f"no bulk data at {text!r}")
    return tuple(steps)


# -- WADO-RS ---------------------------------------------------------------------------------
def _metadata_headers(etag: str) -> dict[str, str]:
    return {"ETag": f'W/"{etag}"', "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}


router = APIRouter(tags=["WADO-RS"], dependencies=[requires(Role.VIEWER)])
uri_router = APIRouter(tags=["WADO-URI"], dependencies=[requires(Role.VIEWER)])


def _retrieve(
    wado: WadoServices, request: Request, who: str, study: str, series: str | None = None,
    instance: str | None = None,
) -> Response:
    accept = accept_of(request)
    offers = dicom_offers(parse_accept(accept))
    if not offers:
        raise _not_acceptable(accept, 'instances are multipart/related; '
                              'type="application/dicom"')
    single = instance is not None and not offers[0][0]
    preferences = [syntax for part, syntax in offers if part != single]
    if not preferences:
        raise _not_acceptable(accept, "a study or series is multipart/related")
    items = wado.instances.instances(study, series, instance, who=who)
    files = wado.instances.files(items, preferences)
    if single:
        (file,) = files
        headers = {} if file.size is None else {"Content-Length": str(file.size)}
        return StreamingResponse(
            _primed(file.chunks(), 1),
            media_type=f"{DICOM}; transfer-syntax={file.transfer_syntax}",
            headers=headers,
        )
    return _multipart_response(_instance_parts(files, base_url(request)), DICOM)


@router.get("/studies/{study}", summary="Retrieve a study's instances (multipart DICOM)",
            responses=_DICOM_RESPONSES, response_class=Response)
def retrieve_study(request: Request, wado: WadoDep, who: Who, study: str) -> Response:
    return _retrieve(wado, request, who, study)


@router.get("/studies/{study}/series/{series}", response_class=Response,
            summary="Retrieve a series' instances (multipart DICOM)",
            responses=_DICOM_RESPONSES)
def retrieve_series(request: Request, wado: WadoDep, who: Who, study: str,
                    series: str) -> Response:
    return _retrieve(wado, request, who, study, series)


@router.get(_INSTANCE, summary="Retrieve an instance (multipart or single DICOM)",
            responses=_DICOM_RESPONSES, response_class=Response)
def retrieve_instance(request: Request, wado: WadoDep, who: Who, study: str, series: str,
                      instance: str) -> Response:
    return _retrieve(wado, request, who, study, series, instance)


def _metadata(
    wado: WadoServices, request: Request, study: str, series: str | None = None,
    instance: str | None = None,
) -> Response:
    accept = accept_of(request)
    if not any(m.matches(DICOM_JSON) or m.matches("application/json")
               for m in parse_accept(accept)):
        raise _not_acceptable(accept, "metadata is application/dicom+json")
    if request.headers.get("if-none-match"):
        current = wado.metadata.current_etag(study, series, instance)
        if _etag_matches(request, current):
            return Response(status_code=304, headers=_metadata_headers(current))
    items = wado.metadata.items(study, series, instance)
    etag = wado.metadata.etag(items)
    headers = _metadata_headers(etag)
    base = base_url(request)
    zipped = "gzip" in request.headers.get("accept-encoding", "")

    def make() -> bytes:
        parts = wado.metadata.metadata(items).parts
        return with_base(b"[" + b",".join(parts) + b"]", base)

    body = wado.answers.get((etag, base, zipped), make)
    if zipped:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies/{study}/metadata",
            summary="Metadata of a study's instances (DICOM JSON)",
            responses=_JSON_RESPONSES, response_class=Response)
def study_metadata(request: Request, wado: WadoDep, study: str) -> Response:
    return _metadata(wado, request, study)


@router.get("/studies/{study}/series/{series}/metadata", response_class=Response,
            summary="Metadata of a series' instances (DICOM JSON)", responses=_JSON_RESPONSES)
def series_metadata(request: Request, wado: WadoDep, study: str, series: str) -> Response:
    return _metadata(wado, request, study, series)


@router.get(_INSTANCE + "/metadata", summary="Metadata of an instance (DICOM JSON)",
            responses=_JSON_RESPONSES, response_class=Response)
def instance_metadata(request: Request, wado: WadoDep, study: str, series: str,
                      instance: str) -> Response:
    return _metadata(wado, request, study, series, instance)


def _frames_answer(wado: WadoServices, request: Request, item: RetrieveItem,
                   numbers: list[int]) -> Response:
    accept = accept_of(request)
    offers = frame_offers(parse_accept(accept))
    single = len(numbers) == 1 and bool(offers) and not offers[0][0]
    usable = [offer for part, offer in offers if part != single]
    if not usable:
        raise _not_acceptable(accept, 'frames are multipart/related; '
                              'type="application/octet-stream" (or the stored image type)')
    return _frame_response(wado.frames.frames(item, numbers, usable), not single)


@router.get(_INSTANCE + "/frames/{frames}", summary="Frames of an instance (pixel data)",
            responses=_MULTIPART_RESPONSES, response_class=Response)
def frames(request: Request, wado: WadoDep, study: str, series: str, instance: str,
           frames: str) -> Response:
    numbers = parse_frame_list(frames)
    item = wado.instances.instance(study, series, instance)
    return _frames_answer(wado, request, item, numbers)


@router.get(_INSTANCE + "/bulk/{path:path}", summary="A bulk data value of an instance",
            responses=_MULTIPART_RESPONSES, response_class=Response)
def bulk(request: Request, wado: WadoDep, study: str, series: str, instance: str,
         path: str) -> Response:
    steps = parse_bulk_path(path)
    item = wado.instances.instance(study, series, instance)
    value = wado.frames.bulk(item, steps)
    if value is None:  # Pixel Data: its frames
        count = wado.frames.frame_count(item)
        return _frames_answer(wado, request, item, list(range(1, count + 1)))
    accept = accept_of(request)
    offers = frame_offers(parse_accept(accept))
    if not offers or offers[0][1].media_type != OCTET_STREAM:
        raise _not_acceptable(accept, "bulk data is application/octet-stream")
    if not offers[0][0]:
        return StreamingResponse(value.chunks, media_type=OCTET_STREAM,
                                 headers={"Content-Length": str(value.size)})
    part = multipart.Part(OCTET_STREAM, value.chunks, value.size)
    return _multipart_response([part], OCTET_STREAM)


def _rendered(
    wado: WadoServices, request: Request, item: RetrieveItem, frame: int,
    viewport: str | None, window: str | None, quality: str | None, thumbnail: bool,
) -> Response:
    options = _rendering(_image_type(request), viewport, window, quality, thumbnail)
    return Response(_render(wado, item, frame, options), media_type=options.media_type)


def _rendered_many(
    wado: WadoServices, request: Request, items: Sequence[RetrieveItem], viewport: str | None,
    window: str | None, quality: str | None,
) -> Response:
    """Each instance's first frame rendered, as one multipart answer (PS3.18 10.4.1.1.3);
    instances without pixels (reports, documents) or that cannot be decoded are left out."""
    options = _rendering(_image_type(request), viewport, window, quality, thumbnail=False)
    base = base_url(request)

    def images() -> Iterator[multipart.Part]:
        for item in items:
            try:
                image = _render(wado, item, 1, options)
            except (NotFound, CannotTranscode, DecoderBusy) as error:  # or DecodeTooLarge
                log.info("rendered %s: %s left out: %s", item.series_instance_uid,
                         item.sop_instance_uid, error)
                continue
            location = (f"{base}/studies/{item.study_instance_uid}/series/"
                        f"{item.series_instance_uid}/instances/{item.sop_instance_uid}")
            yield multipart.Part(options.media_type, (image,), len(image), location)

    boundary = multipart.new_boundary()
    return StreamingResponse(
        _primed(multipart.stream(boundary, images())),
        media_type=multipart.content_type(boundary, options.media_type),
    )


@router.get("/studies/{study}/rendered", summary="A study's images rendered (multipart)",
            responses=_MULTIPART_RESPONSES, response_class=Response)
def rendered_study(
    request: Request, wado: WadoDep, study: str, viewport: Viewport = None,
    window: WindowParam = None, quality: Quality = None,
) -> Response:
    items = wado.instances.instances(study)
    return _rendered_many(wado, request, items, viewport, window, quality)


@router.get("/studies/{study}/series/{series}/rendered", response_class=Response,
            summary="A series' images rendered (multipart)", responses=_MULTIPART_RESPONSES)
def rendered_series(
    request: Request, wado: WadoDep, study: str, series: str, viewport: Viewport = None,
    window: WindowParam = None, quality: Quality = None,
) -> Response:
    items = wado.instances.instances(study, series)
    return _rendered_many(wado, request, items, viewport, window, quality)


@router.get(_INSTANCE + "/rendered",
            summary="An instance rendered (first frame) as JPEG/PNG",
            responses=_IMAGE_RESPONSES, response_class=Response)
def rendered_instance(
    request: Request, wado: WadoDep, study: str, series: str, instance: str,
    viewport: Viewport = None, window: WindowParam = None, quality: Quality = None,
) -> Response:
    item = wado.instances.instance(study, series, instance)
    return _rendered(wado, request, item, 1, viewport, window, quality, thumbnail=False)


@router.get(_INSTANCE + "/frames/{frame}/rendered", response_class=Response,
            summary="A frame rendered as JPEG/PNG", responses=_IMAGE_RESPONSES)
def rendered_frame(
    request: Request, wado: WadoDep, study: str, series: str, instance: str, frame: str,
    viewport: Viewport = None, window: WindowParam = None, quality: Quality = None,
) -> Response:
    numbers = parse_frame_list(frame)
    if len(numbers) != 1:
        raise HttpError(400, "a rendered frame is one frame number")
    item = wado.instances.instance(study, series, instance)
    return _rendered(wado, request, item, numbers[0], viewport, window, quality,
                     thumbnail=False)


def _thumbnail(wado: WadoServices, request: Request, items: Sequence[RetrieveItem],
               frame: int, viewport: str | None) -> Response:
    representative = items[len(items) // 2]
    return _rendered(wado, request, representative, frame, viewport, None, None,
                     thumbnail=True)


@router.get("/studies/{study}/thumbnail",
            summary="A study thumbnail (a representative image)",
            responses=_IMAGE_RESPONSES, response_class=Response)
def study_thumbnail(request: Request, wado: WadoDep, study: str,
                    viewport: Viewport = None) -> Response:
    items = wado.instances.instances(study)
    first_series = [i for i in items if i.series_instance_uid == items[0].series_instance_uid]
    return _thumbnail(wado, request, first_series, 1, viewport)


@router.get("/studies/{study}/series/{series}/thumbnail", response_class=Response,
            summary="A series thumbnail (its middle image)", responses=_IMAGE_RESPONSES)
def series_thumbnail(
    request: Request, wado: WadoDep, study: str, series: str, viewport: Viewport = None
) -> Response:
    return _thumbnail(wado, request, wado.instances.instances(study, series), 1, viewport)


@router.get(_INSTANCE + "/thumbnail", summary="An instance thumbnail",
            responses=_IMAGE_RESPONSES, response_class=Response)
def instance_thumbnail(
    request: Request, wado: WadoDep, study: str, series: str, instance: str,
    viewport: Viewport = None,
) -> Response:
    return _thumbnail(wado, request, wado.instances.instances(study, series, instance), 1,
                      viewport)


@router.get(_INSTANCE + "/frames/{frame}/thumbnail", summary="A frame thumbnail",
            responses=_IMAGE_RESPONSES, response_class=Response)
def frame_thumbnail(
    request: Request, wado: WadoDep, study: str, series: str, instance: str, frame: str,
    viewport: Viewport = None,
) -> Response:
    numbers = parse_frame_list(frame)
    if len(numbers) != 1:
        raise HttpError(400, "a thumbnail is of one frame")
    items = wado.instances.instances(study, series, instance)
    return _thumbnail(wado, request, items, numbers[0], viewport)


# -- WADO-URI --------------------------------------------------------------------------------
@uri_router.get(
    "/wado",
    summary="WADO-URI (PS3.18 9): an instance as DICOM, JPEG or PNG",
    responses={200: {"content": {DICOM: {}, rendering.JPEG: {}, rendering.PNG: {}}}},
    response_class=Response,
)
def wado_uri(
    wado: WadoDep,
    who: Who,
    requestType: str | None = None,  # noqa: N803 - the standard's parameter names
    studyUID: str | None = None,  # noqa: N803
    seriesUID: str | None = None,  # noqa: N803
    objectUID: str | None = None,  # noqa: N803
    contentType: str | None = None,  # noqa: N803
    transferSyntax: str | None = None,  # noqa: N803
    rows: str | None = None,
    columns: str | None = None,
    windowCenter: str | None = None,  # noqa: N803
    windowWidth: str | None = None,  # noqa: N803
    frameNumber: str | None = None,  # noqa: N803
    imageQuality: str | None = None,  # noqa: N803
) -> Response:
    if requestType != "WADO":
        raise HttpError(400, "requestType must be WADO")
    if not (studyUID and seriesUID and objectUID):
        raise HttpError(400, "studyUID, seriesUID and objectUID are required")
    wanted = [t.split(";")[0].strip().lower() for t in (contentType or "image/jpeg").split(",")]
    for media_type in wanted:
        if media_type == DICOM:
            (item,) = wado.instances.instances(studyUID, seriesUID, objectUID, who=who,
                                               how="WADO-URI")
            syntax = (transferSyntax or ExplicitVRLittleEndian).strip()
            (file,) = wado.instances.files([item], [syntax])
            headers = {} if file.size is None else {"Content-Length": str(file.size)}
            return StreamingResponse(_primed(file.chunks(), 1), media_type=DICOM,
                                     headers=headers)
        if media_type in rendering.MEDIA_TYPES or media_type in ("image/*", "*/*"):
            item = wado.instances.instance(studyUID, seriesUID, objectUID)
            return _uri_image(wado, item, media_type, rows, columns, windowCenter,
                              windowWidth, frameNumber, imageQuality)
    raise HttpError(406, f"contentType {contentType!r}: application/dicom, image/jpeg or "
                         "image/png")


def _uri_image(
    wado: WadoServices, item: RetrieveItem, media_type: str, rows: str | None,
    columns: str | None, center: str | None, width: str | None, frame: str | None,
    quality: str | None,
) -> Response:
    media_type = media_type if media_type in rendering.MEDIA_TYPES else rendering.JPEG
    try:
        window = None
        if center not in (None, "") or width not in (None, ""):
            window = rendering.parse_window(f"{center},{width}")
        options = rendering.Rendering(
            media_type=media_type,
            window=window,
            viewport=rendering.parse_size(columns, rows),
            quality=rendering.parse_quality(quality),
        )
    except rendering.RenderingError as error:
        raise HttpError(400, str(error)) from None
    number = parse_frame_list(frame)[0] if frame else 1
    return Response(_render(wado, item, number, options), media_type=media_type)


def _render(
    wado: WadoServices, item: RetrieveItem, number: int, options: rendering.Rendering
) -> bytes:
    """Frame ``number`` rendered while its decoding slot is held; the rendering's working
    copies count against the decoding limit (over it: 422 before anything is decoded)."""
    with wado.frames.decoded(
        item, number, extra_per_sample=rendering.WORKING_BYTES_PER_SAMPLE
    ) as decoded:
        return rendering.render(decoded, options)

