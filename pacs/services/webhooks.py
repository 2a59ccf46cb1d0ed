"""Webhooks: each change of the feed POSTed as JSON to the configured URLs, at least once and
in order per study.

``--webhook URL[,event,...]`` (repeatable; no events: every event) names a receiver. Each
numbered change a webhook wants becomes a delivery job in the routing job table (kind
``webhook``), planned when the change is numbered (:meth:`ChangeService.sequence`); the
:class:`WebhookService` worker claims due deliveries under a lease like routing jobs, so
servers sharing the index share them and a dead server's are taken over. A study's delivery
to a webhook is claimed only once its earlier ones to that webhook succeeded.

The body is the change as ``GET /api/changes`` lists it, compact JSON, UTF-8; with a secret
(``--webhook-secret``) the header ``X-Pacs-Signature: sha256=<hex>`` is the HMAC-SHA256 of
exactly those bytes (RFC 2104), for the receiver to check before it trusts the body. A 2xx
answer is delivered; any other status, a timeout or a connection error is retried with
exponential backoff (``webhook_retry_seconds`` doubling up to ``webhook_retry_max_seconds``),
for as long as the webhook is configured; every attempt and the last error are on the job.

Bounded: http and https URLs only, a timeout on the connection and on each read, redirects
are not followed (a 3xx is a failure), and at most :data:`MAX_RESPONSE_BYTES` of the answer
are read. The URL may name any host: it is the administrator's configuration, not a peer's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import ssl
import urllib.parse
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from pacs.services.changes import ChangeService
from pacs.services.units import unit_of_work
from storage.index import Index, Repository

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
SIGNATURE_HEADER = "X-Pacs-Signature"
EVENTS = frozenset({"stored", "replaced", "archived", "quarantined", "corrected", "rejected",
                    "deleted", "routed"})
"""The events a webhook may ask for (``pacs.services.changes.ChangeEvent``)."""


@dataclass(frozen=True)
class Webhook:
    """A receiver URL and the events it wants (empty: every event)."""

    url: str
    events: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Webhook:
        """``URL[,event,...]``; ValueError naming the problem."""
        url, *events = [part.strip() for part in text.split(",")]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook {url!r} is not an http:// or https:// URL")
        if parts.fragment:
            raise ValueError(f"webhook {url!r} has a fragment")
        try:
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            raise ValueError(f"webhook {url!r} has a malformed port") from None
        unknown = sorted({e for e in events if e} - EVENTS)
        if unknown:
            raise ValueError(f"webhook {url!r}: unknown events {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(EVENTS))})")
        return cls(url, frozenset(e for e in events if e))

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events

    def __str__(self) -> str:
        return ",".join([self.url, *sorted(self.events)])


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Pacs-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class DeliveryFailed(Exception):
    """A POST that was not answered 2xx; the message is recorded on the job."""


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
    """POST ``body``; the status of a 2xx answer, else :class:`DeliveryFailed`. No redirect
    is followed; the answer's body is read up to :data:`MAX_RESPONSE_BYTES` and dropped."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers={
            **headers, "Content-Type": "application/json", "Content-Length": str(len(body))})
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        status = response.status
    except TimeoutError:
        raise DeliveryFailed("timed out") from None
    except ssl.SSLError as error:
        raise DeliveryFailed(f"TLS: {error.reason or error}") from None
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryFailed(_describe(error)) from None
    finally:
        connection.close()
    if not 200 <= status < 300:
        raise DeliveryFailed(f"answered HTTP {status}")
    return status


def _describe(error: Exception) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


class WebhookService:
    """Delivers the due webhook jobs, one at a time per call. Thread-safe."""

    def __init__(
        self,
        *,
        index: Index,
        changes: ChangeService,
        webhooks: Sequence[Webhook],
        secret: bytes | None = None,
        timeout: float = 10.0,
        retry_base: dt.timedelta = dt.timedelta(seconds=2),
        retry_max: dt.timedelta = dt.timedelta(minutes=5),
        node: str = "pacs",
        lease: dt.timedelta = dt.timedelta(seconds=60),
    ) -> None:
        self.index = index
        self.changes = changes
        self.webhooks = tuple(webhooks)
        self.secret = secret
        self.timeout = timeout
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.node = node
        self.lease = max(lease, dt.timedelta(seconds=3 * timeout))  # a POST ends within it

    def _unit_of_work(self, *, write: bool = False) -> AbstractContextManager[Repository]:
        return unit_of_work(self.index, write=write)

    def run_due(self, now: dt.datetime | None = None) -> bool:
        """Claim and attempt one due delivery; False when none was due."""
        if not self.webhooks:
            return False
        now = now or dt.datetime.now(dt.UTC)
        with self._unit_of_work() as repository:
            if not repository.changes.delivery_due(now):
                return False  # no write lock taken every pass for nothing
        with self._unit_of_work(write=True) as repository:
            job = repository.changes.claim_delivery(now, owner=self.node, lease=self.lease)
        if job is None:
            return False
        error: str | None
        retry = True
        change = self.changes.change(job.change_seq)
        if job.webhook >= len(self.webhooks):
            error, retry = f"no webhook number {job.webhook} is configured now", False
        elif change is None:
            error, retry = f"change {job.change_seq} is no longer in the feed", False
        else:
            body = json.dumps(change.as_json(), separators=(",", ":")).encode("utf-8")
            headers = {"User-Agent": "pacs-webhook", "X-Pacs-Event": change.event.value,
                       "X-Pacs-Delivery": str(job.id)}
            if self.secret is not None:
                headers[SIGNATURE_HEADER] = signature(self.secret, body)
            try:
                post(self.webhooks[job.webhook].url, body, headers, timeout=self.timeout)
                error = None
            except DeliveryFailed as failed:
                error = str(failed)
        with self._unit_of_work(write=True) as repository:
            if error is None:
                held = repository.changes.finish_delivery(job.id, owner=self.node)
            else:
                delay = min(self.retry_base * (2 ** min(job.attempts - 1, 30)), self.retry_max)
                next_attempt = dt.datetime.now(dt.UTC) + delay if retry else None
                held = repository.changes.fail_delivery(job.id, error, next_attempt,
                                                        owner=self.node)
                log.info("webhook %d, change %d (attempt %d): %s%s", job.webhook,
                         job.change_seq, job.attempts, error,
                         "" if retry else "; given up")
        if not held:
            log.warning("webhook delivery %d: its lease ran out during the post and another "
                        "server took it", job.id)
        return True
