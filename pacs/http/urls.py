"""This server's own URL as a client reached it (for DICOMweb's RetrieveURL and Location,
the OIDC sign-in's redirect URI)."""

from __future__ import annotations

from starlette.requests import Request


def root_url(request: Request) -> str:
    """The URL of this server's root as the client reached it (``scheme://host[:port]``),
    without a trailing slash.

    Built from the Host header; a Host that names this server's own address without a port
    (dicomweb-client sends ``Host: 127.0.0.1`` on POSTs) gets the port the request came in
    on, so the URLs work. A name (a proxy's Host) is trusted as it is."""
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and server[1] not in (80, 443) and url.hostname in (
        server[0], "localhost", "127.0.0.1", "::1"
    ):
        url = url.replace(port=server[1])
    return str(url).rstrip("/")
