"""The DICOMweb base URL as a client reached this server (for RetrieveURL, Location)."""

from __future__ import annotations

from starlette.requests import Request

from pacs.http.context import DICOMWEB_PATH
from pacs.http.urls import root_url


def base_url(request: Request) -> str:
    """The absolute DICOMweb base URL as this client reached the server (for RetrieveURL):
    :func:`pacs.http.urls.root_url` and the DICOMweb path."""
    return root_url(request) + DICOMWEB_PATH
