"""WADO-RS and WADO-URI against a running ``pacs serve`` (SQLite, and PostgreSQL when set):
retrieve as stored and decoded, metadata (Annex F JSON with bulk data, ETag), frames,
rendered images and thumbnails, WADO-URI, and the 404/406/400 answers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from pacs.services.transcode import dataset_offset
from pacs.services.workflow import StudyState
from tests.dicomweb.conftest import WebArchive
from tests.factories.datasets import (
    ct_instance,
    encode,
    mr_instance,
    multiframe_instance,
    sr_instance,
    us_instance,
)

DICOM_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_DEFAULT = 'multipart/related; type="application/dicom"'
OCTET_AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OCTET = 'multipart/related; type="application/octet-stream"'
JSON = "application/dicom+json"


@dataclass
class Filled:
    ct: list[Dataset]  # native CT series, the last with a private OB bulk value
    j2k: Dataset  # CT, JPEG 2000 lossless, same study, series 2
    rle: Dataset  # CT, RLE, same study, series 3
    implicit: Dataset  # MR, Implicit VR Little Endian
    big_endian: Dataset  # MR, Explicit VR Big Endian, same series as implicit
    multiframe: Dataset  # 5 frames, native
    multiframe_rle: Dataset
    multiframe_j2k: Dataset
    us: Dataset  # RGB
    sr: Dataset  # no pixel data
    quarantined: Dataset

    @property
    def study(self) -> str:
        return str(self.ct[0].StudyInstanceUID)


def uids(ds: Dataset) -> tuple[str, str, str]:
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def instance_path(ds: Dataset) -> str:
    study, series, sop = uids(ds)
    return f"/studies/{study}/series/{series}/instances/{sop}"


@pytest.fixture(scope="module")
def filled(web_archive: WebArchive) -> Filled:
    ct = [ct_instance(InstanceNumber=n) for n in (1, 2, 3)]
    private = ct[2].private_block(0x0009, "PACS TESTS", create=True)
    private.add_new(0x10, "OB", bytes(range(256)) * 8)  # above the inline limit: bulk data
    j2k = encode(ct_instance(InstanceNumber=4, SeriesNumber=2), JPEG2000Lossless)
    rle = encode(ct_instance(InstanceNumber=5, SeriesNumber=3), RLELossless)
    implicit = encode(mr_instance(InstanceNumber=1), ImplicitVRLittleEndian)
    big_endian = encode(mr_instance(InstanceNumber=2), ExplicitVRBigEndian)
    multiframe = multiframe_instance(5)
    multiframe_rle = encode(multiframe_instance(5, SeriesNumber=2), RLELossless)
    multiframe_j2k = encode(multiframe_instance(5, SeriesNumber=3), JPEG2000Lossless)
    us = us_instance()
    sr = sr_instance(PatientID="PAT-SR-1")
    quarantined = ct_instance(PatientID="PAT-Q", InstanceNumber=1)
    data = Filled(ct, j2k, rle, implicit, big_endian, multiframe, multiframe_rle,
                  multiframe_j2k, us, sr, quarantined)
    web_archive.store([*ct, j2k, rle, implicit, big_endian, multiframe, multiframe_rle,
                       multiframe_j2k, us, sr, quarantined])
    web_archive.set_state(str(quarantined.StudyInstanceUID), StudyState.QUARANTINED)
    return data


def get(web_archive: WebArchive, path: str, accept: str | None = None,
        **headers: str) -> httpx.Response:
    if accept is not None:
        headers["Accept"] = accept
    url = path if path.startswith("http") else web_archive.url + path
    return web_archive.http.get(url, headers=headers)


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The body parts of a multipart/related answer: (headers, content)."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in content_type.split(";")
        if p.strip().startswith("boundary=")
    )
    segments = response.content.split(b"--" + boundary.encode())
    assert segments[0] == b"" and segments[-1] == b"--\r\n"
    found = []
    for segment in segments[1:-1]:
        head, _, body = segment[2:].partition(b"\r\n\r\n")
        assert body.endswith(b"\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in head.decode().split("\r\n"))
        }
        found.append((headers, body[:-2]))
    return found


def transfer_syntax_of(content_type: str) -> str:
    return next(
        p.split("=", 1)[1].strip('"') for p in content_type.split(";")
        if p.strip().startswith("transfer-syntax=")
    )


def sent_bytes(web_archive: WebArchive, ds: Dataset) -> bytes:
    return Path(web_archive.sent[str(ds.SOPInstanceUID)]).read_bytes()


def assert_same_file(received: bytes, web_archive: WebArchive, ds: Dataset) -> None:
    """The data set as sent, byte for byte (the File Meta Information is the server's own:
    C-STORE carries the data set only), and the same transfer syntax."""
    sent = sent_bytes(web_archive, ds)
    assert received[dataset_offset(received):] == sent[dataset_offset(sent):]
    meta = pydicom.dcmread(io.BytesIO(received), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def sent_dataset(web_archive: WebArchive, ds: Dataset) -> Dataset:
    return pydicom.dcmread(web_archive.sent[str(ds.SOPInstanceUID)])


def assert_alive(web_archive: WebArchive) -> None:
    assert web_archive.http.get(f"{web_archive.server.base_url}/health").status_code == 200


# -- retrieve -------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_as_stored_is_byte_identical(
    web_archive: WebArchive, filled: Filled, level: str
) -> None:
    study, series, sop = uids(filled.j2k)
    path = {
        "study": f"/studies/{study}",
        "series": f"/studies/{study}/series/{series}",
        "instance": instance_path(filled.j2k),
    }[level]
    expected = {
        "study": [*filled.ct, filled.j2k, filled.rle],
        "series": [filled.j2k],
        "instance": [filled.j2k],
    }[level]
    response = get(web_archive, path, DICOM_AS_STORED)
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    got = parts(response)
    assert len(got) == len(expected)
    by_uid = {str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID): (h, body) for h, body in got}
    for ds in expected:
        headers, body = by_uid[str(ds.SOPInstanceUID)]
        assert_same_file(body, web_archive, ds)
        stored = str(ds.file_meta.TransferSyntaxUID)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={stored}"
        assert headers["content-location"].endswith(instance_path(ds))


def test_every_instance_as_stored(web_archive: WebArchive, filled: Filled) -> None:
    everything = [*filled.ct, filled.j2k, filled.rle, filled.implicit, filled.big_endian,
                  filled.multiframe, filled.multiframe_rle, filled.multiframe_j2k, filled.us,
                  filled.sr]
    for ds in everything:
        response = get(web_archive, instance_path(ds), DICOM_AS_STORED)
        assert response.status_code == 200, response.text
        ((_, body),) = parts(response)
        assert_same_file(body, web_archive, ds)


def test_single_part_instance(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.ct[0]), "application/dicom; transfer-syntax=*")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert_same_file(response.content, web_archive, filled.ct[0])
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize("accept", [DICOM_DEFAULT, None, "*/*",
                                    DICOM_DEFAULT + "; transfer-syntax=1.2.840.10008.1.2.1"])
@pytest.mark.parametrize("which", ["j2k", "rle", "multiframe_j2k"])
def test_compressed_instance_decoded_by_default(
    web_archive: WebArchive, filled: Filled, accept: str | None, which: str
) -> None:
    ds = getattr(filled, which)
    response = get(web_archive, instance_path(ds), accept)
    assert response.status_code == 200, response.text
    ((headers, body),) = parts(response)
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian
    received = pydicom.dcmread(io.BytesIO(body))
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    np.testing.assert_array_equal(
        received.pixel_array, sent_dataset(web_archive, ds).pixel_array
    )


def test_implicit_vr_asked_explicitly(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.rle),
                   DICOM_DEFAULT + f"; transfer-syntax={ImplicitVRLittleEndian}")
    ((headers, body),) = parts(response)
    assert transfer_syntax_of(headers["content-type"]) == ImplicitVRLittleEndian
    received = pydicom.dcmread(io.BytesIO(body))
    np.testing.assert_array_equal(
        received.pixel_array, sent_dataset(web_archive, filled.rle).pixel_array
    )


def test_q_values_pick_the_first_acceptable(web_archive: WebArchive, filled: Filled) -> None:
    accept = (f"{DICOM_DEFAULT}; transfer-syntax={JPEGLSLossless}; q=0.9, "
              f"{DICOM_DEFAULT}; transfer-syntax=*; q=0.5, {DICOM_DEFAULT}; q=0.1")
    response = get(web_archive, instance_path(filled.j2k), accept)
    ((headers, body),) = parts(response)
    assert transfer_syntax_of(headers["content-type"]) == JPEG2000Lossless
    assert_same_file(body, web_archive, filled.j2k)
    # the same syntax named explicitly is "as stored"
    named = get(web_archive, instance_path(filled.j2k),
                f"{DICOM_DEFAULT}; transfer-syntax={JPEG2000Lossless}")
    assert_same_file(parts(named)[0][1], web_archive, filled.j2k)


@pytest.mark.parametrize("accept", [
    "application/json",
    "image/jpeg",
    f"{DICOM_DEFAULT}; transfer-syntax={JPEGLSLossless}",
    'multipart/related; type="application/dicom+xml"',
])
def test_unacceptable_406(web_archive: WebArchive, filled: Filled, accept: str) -> None:
    response = get(web_archive, instance_path(filled.j2k), accept)
    assert response.status_code == 406
    assert "error" in response.json()
    assert_alive(web_archive)


def test_bare_application_dicom_for_a_study_406(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, f"/studies/{filled.study}", "application/dicom")
    assert response.status_code == 406


def test_dicomweb_client_retrieves(web_archive: WebArchive, filled: Filled) -> None:
    client = DICOMwebClient(url=web_archive.url)
    study, series, _ = uids(filled.ct[0])
    datasets = client.retrieve_series(study, series, media_types=(("application/dicom", "*"),))
    assert sorted(str(d.SOPInstanceUID) for d in datasets) == sorted(
        str(d.SOPInstanceUID) for d in filled.ct
    )
    whole = client.retrieve_study(study)
    assert len(whole) == 5


# -- not found -------------------------------------------------------------------------------
def test_unknown_and_misplaced_uids_404(web_archive: WebArchive, filled: Filled) -> None:
    study, series, sop = uids(filled.ct[0])
    other_study = str(filled.us.StudyInstanceUID)
    for path in [
        "/studies/1.2.3.4",
        f"/studies/{study}/series/1.2.3.4",
        f"/studies/{other_study}/series/{series}",
        f"/studies/{study}/series/{series}/instances/1.2.3",
        f"/studies/{study}/series/{series}/instances/1.2.3/metadata",
        f"/studies/{study}/series/1.2.3/metadata",
        f"/studies/{study}/series/{series}/instances/1.2.3/frames/1",
        f"/studies/{study}/series/{series}/instances/1.2.3/rendered",
    ]:
        response = get(web_archive, path)
        assert response.status_code == 404, path
        assert "error" in response.json()
    assert_alive(web_archive)


def test_quarantined_study_is_invisible(web_archive: WebArchive, filled: Filled) -> None:
    study, series, sop = uids(filled.quarantined)
    base = instance_path(filled.quarantined)
    for path, accept in [
        (f"/studies/{study}", DICOM_AS_STORED),
        (f"/studies/{study}/series/{series}", DICOM_AS_STORED),
        (base, DICOM_AS_STORED),
        (f"/studies/{study}/metadata", JSON),
        (f"/studies/{study}/series/{series}/metadata", JSON),
        (base + "/metadata", JSON),
        (base + "/frames/1", OCTET),
        (base + "/rendered", "image/jpeg"),
        (base + "/thumbnail", "image/jpeg"),
        (base + "/bulk/7FE00010", OCTET),
        (f"/studies/{study}/thumbnail", "image/jpeg"),
    ]:
        assert get(web_archive, path, accept).status_code == 404, path
    wado_uri = web_archive.http.get(f"{web_archive.server.base_url}/wado", params={
        "requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
        "contentType": "application/dicom",
    })
    assert wado_uri.status_code == 404


# -- metadata --------------------------------------------------------------------------------
def _bulk_fetcher(web_archive: WebArchive) -> Any:
    def fetch(uri: str) -> bytes:
        response = web_archive.http.get(uri, headers={"Accept": OCTET})
        assert response.status_code == 200, response.text
        return b"".join(body for _, body in parts(response))

    return fetch


def _assert_same_values(got: Dataset, sent: Dataset) -> None:
    for element in sent:
        if element.tag.group == 0x0002:
            continue
        assert element.tag in got, element
        mine = got[element.tag]
        if element.VR == "SQ":
            assert len(mine.value) == len(element.value)
            continue
        if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            assert bytes(mine.value) == bytes(element.value), element.keyword
        else:
            assert mine.value == element.value, element.keyword


@pytest.mark.parametrize("which", ["ct", "implicit", "big_endian", "us", "sr"])
def test_metadata_round_trips(web_archive: WebArchive, filled: Filled, which: str) -> None:
    chosen = getattr(filled, which)
    ds = chosen[2] if isinstance(chosen, list) else chosen
    response = get(web_archive, instance_path(ds) + "/metadata", JSON)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    (obj,) = response.json()
    assert obj["00083002"] == {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    del obj["00083002"]
    got = Dataset.from_json(obj, bulk_data_uri_handler=_bulk_fetcher(web_archive))
    sent = sent_dataset(web_archive, ds)
    if sent.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:  # bulk data is little endian
        sent = pydicom.dcmread(io.BytesIO(
            _as_little_endian(web_archive, ds)
        ))
    _assert_same_values(got, sent)


def _as_little_endian(web_archive: WebArchive, ds: Dataset) -> bytes:
    response = get(web_archive, instance_path(ds),
                   f"{DICOM_DEFAULT}; transfer-syntax={ExplicitVRLittleEndian}")
    return parts(response)[0][1]


def test_metadata_bulk_data_uris(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.ct[2]) + "/metadata", JSON)
    (obj,) = response.json()
    assert obj["7FE00010"]["BulkDataURI"].startswith(web_archive.url + instance_path(filled.ct[2]))
    private = obj["00091010"]
    assert private["vr"] == "OB" and "BulkDataURI" in private
    raw = get(web_archive, private["BulkDataURI"], "application/octet-stream")
    assert raw.status_code == 200
    assert raw.content == bytes(range(256)) * 8
    client = DICOMwebClient(url=web_archive.url)
    assert client.retrieve_bulkdata(private["BulkDataURI"]) == [bytes(range(256)) * 8]
    pixels = client.retrieve_bulkdata(obj["7FE00010"]["BulkDataURI"])
    assert pixels == [sent_dataset(web_archive, filled.ct[2]).PixelData]
    assert obj["00280030"] == {"vr": "DS", "Value": [0.5, 0.5]}
    assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert obj["00281050"]["Value"] == [40]


def test_series_and_study_metadata(web_archive: WebArchive, filled: Filled) -> None:
    study, series, _ = uids(filled.ct[0])
    series_json = get(web_archive, f"/studies/{study}/series/{series}/metadata", JSON).json()
    assert [o["00080018"]["Value"][0] for o in series_json] == [
        str(d.SOPInstanceUID) for d in filled.ct
    ]
    study_json = get(web_archive, f"/studies/{study}/metadata").json()
    assert len(study_json) == 5
    client = DICOMwebClient(url=web_archive.url)
    assert len(client.retrieve_series_metadata(study, series)) == 3


def test_metadata_not_acceptable(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.ct[0]) + "/metadata", "application/dicom")
    assert response.status_code == 406


def test_metadata_etag_and_304(web_archive: WebArchive, filled: Filled) -> None:
    study = str(filled.implicit.StudyInstanceUID)
    series = str(filled.implicit.SeriesInstanceUID)
    path = f"/studies/{study}/series/{series}/metadata"
    first = get(web_archive, path, JSON)
    etag = first.headers["etag"]
    again = get(web_archive, path, JSON)
    assert again.headers["etag"] == etag and again.content == first.content
    cached = get(web_archive, path, JSON, **{"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.headers["etag"] == etag and cached.content == b""
    gzipped = get(web_archive, path, JSON, **{"Accept-Encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip"
    assert gzipped.json() == first.json()
    # a new instance in the series changes the ETag and the answer
    web_archive.store([mr_instance(InstanceNumber=3)])
    changed = get(web_archive, path, JSON, **{"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert len(changed.json()) == len(first.json()) + 1


# -- frames ----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["multiframe", "multiframe_rle", "multiframe_j2k"])
def test_frames_decoded(web_archive: WebArchive, filled: Filled, which: str) -> None:
    ds = getattr(filled, which)
    sent = sent_dataset(web_archive, ds)
    expected = sent.pixel_array
    response = get(web_archive, instance_path(ds) + "/frames/1,3,5", OCTET)
    assert response.status_code == 200, response.text
    got = parts(response)
    assert len(got) == 3
    for (headers, body), number in zip(got, (1, 3, 5), strict=True):
        assert headers["content-type"].startswith("application/octet-stream")
        frame = np.frombuffer(body, dtype="<u2").reshape(expected.shape[1:])
        np.testing.assert_array_equal(frame, expected[number - 1])


@pytest.mark.parametrize("which", ["multiframe_rle", "multiframe_j2k"])
def test_frames_as_stored(web_archive: WebArchive, filled: Filled, which: str) -> None:
    ds = getattr(filled, which)
    sent = sent_dataset(web_archive, ds)
    stored = list(generate_frames(sent.PixelData, number_of_frames=5))
    response = get(web_archive, instance_path(ds) + "/frames/2,4", OCTET_AS_STORED)
    assert response.status_code == 200
    got = parts(response)
    assert [body for _, body in got] == [stored[1], stored[3]]
    assert transfer_syntax_of(got[0][0]["content-type"]) == sent.file_meta.TransferSyntaxUID


def test_frames_in_their_image_media_type(web_archive: WebArchive, filled: Filled) -> None:
    sent = sent_dataset(web_archive, filled.multiframe_j2k)
    stored = list(generate_frames(sent.PixelData, number_of_frames=5))
    response = get(web_archive, instance_path(filled.multiframe_j2k) + "/frames/1",
                   'multipart/related; type="image/jp2"')
    ((headers, body),) = parts(response)
    assert headers["content-type"].startswith("image/jp2")
    assert body == stored[0]
    rle = get(web_archive, instance_path(filled.multiframe_rle) + "/frames/1",
              'multipart/related; type="image/jp2"')
    assert rle.status_code == 406


def test_frames_with_dicomweb_client(web_archive: WebArchive, filled: Filled) -> None:
    client = DICOMwebClient(url=web_archive.url)
    study, series, sop = uids(filled.multiframe)
    frames = client.retrieve_instance_frames(study, series, sop, frame_numbers=[2])
    expected = sent_dataset(web_archive, filled.multiframe).pixel_array[1]
    np.testing.assert_array_equal(
        np.frombuffer(frames[0], dtype="<u2").reshape(expected.shape), expected
    )


def test_native_single_frame_as_stored(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.ct[0]) + "/frames/1", OCTET_AS_STORED)
    ((headers, body),) = parts(response)
    assert body == sent_dataset(web_archive, filled.ct[0]).PixelData
    assert transfer_syntax_of(headers["content-type"]) == ExplicitVRLittleEndian


@pytest.mark.parametrize("frames,status", [("6", 404), ("0", 400), ("1,a", 400), ("", 404),
                                           ("1,,2", 400), ("-1", 400)])
def test_bad_frame_lists(
    web_archive: WebArchive, filled: Filled, frames: str, status: int
) -> None:
    response = get(web_archive, instance_path(filled.multiframe) + f"/frames/{frames}", OCTET)
    assert response.status_code == status
    assert_alive(web_archive)


def test_frames_of_an_instance_without_pixels_404(web_archive: WebArchive, filled: Filled) -> None:
    assert get(web_archive, instance_path(filled.sr) + "/frames/1", OCTET).status_code == 404


def test_pixel_data_bulk_of_a_multiframe(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.multiframe_rle) + "/bulk/7FE00010", OCTET)
    got = parts(response)
    assert len(got) == 5
    expected = sent_dataset(web_archive, filled.multiframe_rle).pixel_array
    assert got[4][1] == expected[4].astype("<u2").tobytes()


# -- rendered and thumbnails -----------------------------------------------------------------
def _image(response: httpx.Response, media_type: str) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_rendered_jpeg_and_png(web_archive: WebArchive, filled: Filled) -> None:
    path = instance_path(filled.ct[0]) + "/rendered"
    jpeg = _image(get(web_archive, path), "image/jpeg")
    assert jpeg.format == "JPEG" and jpeg.size == (64, 64) and jpeg.mode == "L"
    png = _image(get(web_archive, path, "image/png"), "image/png")
    assert png.format == "PNG" and png.size == (64, 64)
    small = _image(get(web_archive, path + "?viewport=32,32", "image/png"), "image/png")
    assert small.size == (32, 32)


def test_rendered_window(web_archive: WebArchive, filled: Filled) -> None:
    path = instance_path(filled.ct[0]) + "/rendered"
    ds = sent_dataset(web_archive, filled.ct[0])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    wide = np.asarray(_image(get(web_archive, path + f"?window={hu.mean()},100000",
                                 "image/png"), "image/png"))
    assert 120 <= wide.min() <= wide.max() <= 135  # everything near mid-gray
    narrow = np.asarray(_image(get(web_archive, path + f"?window={hu.min() - 10},2",
                                   "image/png"), "image/png"))
    assert (narrow == 255).all()
    assert get(web_archive, path + "?window=1", "image/png").status_code == 400


def test_rendered_frame_rgb_and_thumbnails(web_archive: WebArchive, filled: Filled) -> None:
    frame = _image(get(web_archive, instance_path(filled.multiframe_j2k) + "/frames/3/rendered",
                       "image/png"), "image/png")
    assert frame.size == (32, 32)
    us = _image(get(web_archive, instance_path(filled.us) + "/rendered", "image/png"),
                "image/png")
    assert us.mode == "RGB" and us.size == (64, 48)
    expected = sent_dataset(web_archive, filled.us).pixel_array
    np.testing.assert_array_equal(np.asarray(us), expected)
    thumb = _image(get(web_archive, instance_path(filled.us) + "/thumbnail"), "image/jpeg")
    assert thumb.size == (128, 96)
    study, series, _ = uids(filled.ct[0])
    for path in [f"/studies/{study}/thumbnail", f"/studies/{study}/series/{series}/thumbnail",
                 instance_path(filled.multiframe) + "/frames/2/thumbnail"]:
        assert _image(get(web_archive, path + "?viewport=50,50"), "image/jpeg").size == (50, 50)


def test_rendered_series_and_study(web_archive: WebArchive, filled: Filled) -> None:
    study, series, _ = uids(filled.ct[0])
    response = get(web_archive, f"/studies/{study}/series/{series}/rendered?viewport=16,16",
                   "multipart/related; type=image/png")
    got = parts(response)
    assert len(got) == 3
    for (headers, body), ds in zip(got, filled.ct, strict=True):
        assert headers["content-type"] == "image/png"
        assert headers["content-location"].endswith(instance_path(ds))
        assert Image.open(io.BytesIO(body)).size == (16, 16)
    assert len(parts(get(web_archive, f"/studies/{study}/rendered"))) == 5
    report = get(web_archive, f"/studies/{filled.sr.StudyInstanceUID}/rendered")
    assert response.status_code == 200 and parts(report) == []


def test_accept_query_parameter(web_archive: WebArchive, filled: Filled) -> None:
    response = web_archive.http.get(
        web_archive.url + instance_path(filled.ct[0]) + "/rendered",
        params={"accept": "image/png"}, headers={"Accept": "image/jpeg"},
    )
    assert response.headers["content-type"] == "image/png"


def test_big_endian_frames_are_not_offered(web_archive: WebArchive, filled: Filled) -> None:
    response = get(web_archive, instance_path(filled.multiframe) + "/frames/1",
                   f"{OCTET}; transfer-syntax={ExplicitVRBigEndian}")
    assert response.status_code == 406


def test_rendered_not_acceptable_or_impossible(web_archive: WebArchive, filled: Filled) -> None:
    path = instance_path(filled.ct[0]) + "/rendered"
    assert get(web_archive, path, "application/dicom").status_code == 406
    assert get(web_archive, instance_path(filled.sr) + "/rendered").status_code == 404
    assert get(web_archive, path + "?viewport=a,b").status_code == 400
    assert_alive(web_archive)


# -- WADO-URI --------------------------------------------------------------------------------
def _wado_uri(web_archive: WebArchive, ds: Dataset, **params: str) -> httpx.Response:
    study, series, sop = uids(ds)
    query = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
             **params}
    return web_archive.http.get(f"{web_archive.server.base_url}/wado", params=query)


def test_wado_uri(web_archive: WebArchive, filled: Filled) -> None:
    dicom = _wado_uri(web_archive, filled.ct[0], contentType="application/dicom")
    assert dicom.status_code == 200
    assert dicom.headers["content-type"] == "application/dicom"
    assert_same_file(dicom.content, web_archive, filled.ct[0])
    decoded = _wado_uri(web_archive, filled.j2k, contentType="application/dicom")
    received = pydicom.dcmread(io.BytesIO(decoded.content))
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    stored = _wado_uri(web_archive, filled.j2k, contentType="application/dicom",
                       transferSyntax=JPEG2000Lossless)
    assert_same_file(stored.content, web_archive, filled.j2k)
    jpeg = _image(_wado_uri(web_archive, filled.ct[0]), "image/jpeg")
    assert jpeg.size == (64, 64)
    png = _image(_wado_uri(web_archive, filled.multiframe, contentType="image/png", rows="16",
                           columns="16", frameNumber="2", windowCenter="2000",
                           windowWidth="4000"), "image/png")
    assert png.size == (16, 16)


def test_wado_uri_errors(web_archive: WebArchive, filled: Filled) -> None:
    base = f"{web_archive.server.base_url}/wado"
    assert web_archive.http.get(base).status_code == 400
    assert _wado_uri(web_archive, filled.ct[0], requestType="WADOX").status_code == 400
    study, series, _ = uids(filled.ct[0])
    unknown = web_archive.http.get(base, params={
        "requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": "1.2.3"})
    assert unknown.status_code == 404
    assert _wado_uri(web_archive, filled.ct[0], contentType="text/html").status_code == 406
    assert _wado_uri(web_archive, filled.ct[0], rows="x").status_code == 400
    assert_alive(web_archive)


# -- OpenAPI ---------------------------------------------------------------------------------
def test_every_wado_route_has_a_summary(web_archive: WebArchive) -> None:
    schema = web_archive.http.get(f"{web_archive.server.base_url}/openapi.json").json()
    retrieve = ("/dicom-web/studies/{study}", "/dicom-web/studies/{study}/series/{series}",
                "/dicom-web/studies/{study}/series/{series}/instances/{instance}")
    wado_paths = [p for p in schema["paths"] if p in retrieve or p == "/wado" or any(
        word in p for word in ("/metadata", "/frames", "/rendered", "/thumbnail", "/bulk"))]
    assert len(wado_paths) == 17
    for path in wado_paths:
        operation = schema["paths"][path]["get"]
        assert operation.get("summary"), path
        assert operation["responses"]["200"]["content"], path
