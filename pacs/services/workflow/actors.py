"""Who did something, as the audit trail names them."""

from __future__ import annotations


def actor(protocol: str, ae_title: str | None = None, address: str | None = None, *,
          user: str | None = None, tls_subject: str | None = None) -> str:
    """Who did something, for the audit trail: ``dimse:MODALITY@10.0.0.5``, ``http:1.2.3.4``,
    ``http:token:ohif@10.0.0.7`` (``user``: an authenticated principal's actor), and a TLS
    client certificate's subject after a space: ``dimse:CT1@10.0.0.5 tls:CN=ct1.example``."""
    name = user or ae_title
    who = f"{protocol}:{name or ''}"
    if address:
        who += f"@{address}" if name else address
    who = who.rstrip(":")
    if tls_subject:
        who += f" tls:{tls_subject}"
    return who
