"""The AE registry: the remote DICOM applications this server knows, and what each may do.

An entry names an AE title (PS3.5 6.2), the addresses it may call from, the DIMSE services it
may ask for (:class:`Service`: store, find, move, get; C-ECHO is allowed to every registered
AE), and whether it is a C-MOVE destination and routing target, reached at its first host and
``port``. Entries come from ``pacs ae add`` (source ``cli``) and from the flags of ``pacs
serve``, written into the registry at each start (:meth:`AeRegistry.sync_flags`):

* ``--peer AE=HOST:PORT`` (source ``peer-flag``): a move destination at HOST:PORT that may also
  call from HOST to query and retrieve (find, move, get): a workstation, as the flag always
  meant;
* ``--modality AE`` (source ``modality-flag``): may store, from any address (``*``); register
  it with ``pacs ae add`` and its hosts to bind it to its addresses.

A title given as both is one entry: the peer's, that may store too. An entry made by ``pacs ae
add`` is never changed by a flag; flag entries whose flag is gone are removed at the next
start. Every change is audited (``ae-add``, ``ae-update``, ``ae-remove``) in its transaction.

Hosts are IP addresses (v4, v6), networks (``10.1.2.0/24``), host names or ``*`` (any address).
A name is resolved forward, to its addresses, when the registry is loaded; the caller's address
is never looked up in reverse (its owner controls that answer).

Lookups (one per association, :meth:`AeRegistry.admit`; one per C-MOVE or routing job,
:meth:`AeRegistry.destination`) are answered from an in-process snapshot of the whole table,
reloaded from the index when it is older than ``max_age_s`` (a TTL, 2 s by default). Several
processes and replicas share the index: a change made anywhere takes effect everywhere within
``max_age_s``, and at once in the process that made it. A lookup costs a dict access and an
address comparison, so a flood of unknown callers costs at most one index read per
``max_age_s``; the first lookup that finds the snapshot stale reloads it while the others go
on with the previous one.
"""

from __future__ import annotations

import builtins
import datetime as dt
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pacs.services.errors import AlreadyExists, InvalidValue, OutOfResources
from pacs.services.retrieve import Destination
from storage.index import AeRecord, Index, IndexDataError, IndexUnavailable

# AeRecord: what the front ends format (they never import the index themselves).
__all__ = ["AeRecord", "AeRegistry", "AeRegistryError", "AeTitleTaken", "Service",
           "check_ae_title", "check_host"]

log = logging.getLogger(__name__)

ANY_HOST = "*"
MAX_HOSTS = 32
DEFAULT_MAX_AGE_S = 2.0

# PS3.5 6.2: an AE title is at most 16 characters of the Default Character Repertoire,
# without backslash or control characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")  # RFC 1123 2.1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Service(StrEnum):
    """The DIMSE services a registered AE may be allowed (C-ECHO needs no permission)."""

    STORE = "store"
    FIND = "find"
    MOVE = "move"
    GET = "get"

    @property
    def dimse(self) -> str:
        """The DIMSE name: C-STORE, C-FIND, C-MOVE, C-GET."""
        return f"C-{self.value.upper()}"


class Source(StrEnum):
    """Who made an entry."""

    CLI = "cli"  # pacs ae add (and the admin routes)
    PEER_FLAG = "peer-flag"  # pacs serve --peer AE=HOST:PORT
    MODALITY_FLAG = "modality-flag"  # pacs serve --modality AE


FLAG_SOURCES = frozenset({Source.PEER_FLAG, Source.MODALITY_FLAG})
PEER_SERVICES = (Service.FIND, Service.MOVE, Service.GET)
MODALITY_SERVICES = (Service.STORE,)

UNKNOWN_AE = "calling AE title not registered"
UNLISTED_ADDRESS = "calling AE title not registered for this address"


class AeRegistryError(InvalidValue):
    """An entry cannot be made as asked (the message says why, for the user)."""


class AeTitleTaken(AeRegistryError, AlreadyExists):
    """The AE title is registered already (entries are not changed in place: remove first)."""


def check_ae_title(value: str) -> str:
    """Validate an AE title (PS3.5 6.2) and return it without padding; ValueError if bad."""
    title = value.strip()
    if not _AE_TITLE.fullmatch(title):
        raise ValueError(
            f"AE title {value!r} must be 1 to 16 printable ASCII characters without backslash"
        )
    return title


def check_host(value: str) -> str:
    """Validate a host: an IP address, a network, a name or ``*``; returned in canonical
    form (addresses compressed, names in lower case). ValueError if it is none of these."""
    text = value.strip()
    if text == ANY_HOST:
        return text
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if "/" in bare:
        try:
            return str(ipaddress.ip_network(bare))
        except ValueError:
            raise ValueError(f"host {value!r} is not a network (its address bits beyond the "
                             "prefix must be zero, as in 10.1.2.0/24)") from None
    name = bare.lower().rstrip(".")
    if len(name) <= 253 and name and all(_HOST_LABEL.fullmatch(p) for p in name.split(".")):
        return name
    raise ValueError(f"host {value!r} is not an IP address, a network (10.1.2.0/24), "
                     "a host name or * (any address)")


@dataclass(frozen=True)
class Admission:
    """The answer to an association request: the AE's services, or why it is refused."""

    ae_title: str
    services: frozenset[Service] = frozenset()
    refused: str | None = None  # UNKNOWN_AE or UNLISTED_ADDRESS; None: admitted

    @property
    def admitted(self) -> bool:
        return self.refused is None


@dataclass(frozen=True)
class _Known:
    """An entry as lookups use it: its hosts as networks, names resolved."""

    record: AeRecord
    services: frozenset[Service]
    networks: tuple[Network, ...]
    any_address: bool
    names: bool  # some hosts are names, resolved when loaded

    def allows_address(self, address: str) -> bool:
        if self.any_address:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees ::ffff:10.0.0.5
        return any(ip in network for network in self.networks)


@dataclass
class _Snapshot:
    entries: dict[str, _Known]
    loaded_at: float
    generation: int = field(default=0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AeRegistry:
    """Adds, lists, removes and looks up registered AEs (see the module's docstring)."""

    def __init__(
        self, *, index: Index, max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], dt.datetime] = _now, monotonic: Callable[[], float] = time.monotonic,
        resolve: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.index = index
        self.max_age_s = max_age_s
        self.clock = clock
        self.monotonic = monotonic
        self.resolve = resolve or _resolve
        self._snapshot: _Snapshot | None = None
        self._generation = 0  # bumped by every change made here: a load older than it is stale
        self._reloading = threading.Lock()
        self._unresolved: set[str] = set()  # names already logged as not resolving

    # -- changes ---------------------------------------------------------------------------
    def add(
        self, ae_title: str, *, hosts: Iterable[str], port: int | None = None,
        allow: Iterable[Service | str] = (), move_destination: bool = False, who: str = "cli",
    ) -> AeRecord:
        """Register an AE (source ``cli``); :class:`AeRegistryError` when a value is invalid
        or the title is registered already."""
        title, fields = _validated(ae_title, hosts, port, allow, move_destination)
        try:
            with self.index.unit_of_work(write=True) as repository:
                existing = repository.application_entities.by_title(title)
                if existing is None:
                    record = repository.application_entities.add(
                        ae_title=title, **fields, source=Source.CLI.value,
                        created_at=self.clock())
                    repository.audit.append(actor=who, action="ae-add", outcome="added",
                                              detail=describe(record))
                    self._changed()
                    return record
        except IndexDataError:
            # the title is unique in the index: another process may have taken it since
            with self.index.unit_of_work() as repository:
                existing = repository.application_entities.by_title(title)
            if existing is None:
                raise
        by = f" (by {_source_flag(existing.source)})" if existing.source in FLAG_SOURCES else ""
        raise AeTitleTaken(f"AE title {title!r} is registered already{by}: remove it first")

    def remove(self, ae_title: str, *, who: str = "cli") -> bool:
        """Remove an entry at once (every process within ``max_age_s``); False when there is
        no entry with that title."""
        title = ae_title.strip()
        with self.index.unit_of_work(write=True) as repository:
            record = repository.application_entities.by_title(title)
            if record is None or not repository.application_entities.remove(title):
                return False
            repository.audit.append(actor=who, action="ae-remove", outcome="removed",
                                      detail=describe(record))
        self._changed()
        return True

    def list(self) -> builtins.list[AeRecord]:
        """Every entry, by AE title (read from the index, not the snapshot)."""
        with self.index.unit_of_work() as repository:
            return repository.application_entities.all()

    def sync_flags(self, peers: Sequence[Destination], modalities: Sequence[str], *,
                   who: str = "pacs:serve") -> builtins.list[str]:
        """Write the ``--peer`` and ``--modality`` flags into the registry (see the module's
        docstring); returns the titles left as ``pacs ae add`` registered them."""
        wanted: dict[str, dict[str, Any]] = {}
        for peer in peers:
            title = check_ae_title(peer.ae_title)
            wanted[title] = {"hosts": [check_host(peer.host)], "port": peer.port,
                             "services": [s.value for s in PEER_SERVICES],
                             "move_destination": True, "source": Source.PEER_FLAG.value}
        for modality in modalities:
            title = check_ae_title(modality)
            if title in wanted:
                services = {*wanted[title]["services"], Service.STORE.value}
                wanted[title]["services"] = [s.value for s in Service if s.value in services]
            else:
                wanted[title] = {"hosts": [ANY_HOST], "port": None,
                                 "services": [s.value for s in MODALITY_SERVICES],
                                 "move_destination": False,
                                 "source": Source.MODALITY_FLAG.value}
        kept: builtins.list[str] = []
        with self.index.unit_of_work(write=True) as repository:
            records = repository.application_entities
            existing = {record.ae_title: record for record in records.all()}
            for title, fields in wanted.items():
                record = existing.get(title)
                if record is None:
                    added = records.add(ae_title=title, **fields, created_at=self.clock())
                    repository.audit.append(actor=who, action="ae-add", outcome="added",
                                              detail=describe(added))
                elif record.source not in FLAG_SOURCES:
                    kept.append(title)
                elif _fields(record) != fields:
                    records.replace(ae_title=title, **fields)
                    changed = records.by_title(title)
                    assert changed is not None
                    repository.audit.append(actor=who, action="ae-update", outcome="updated",
                                              detail=describe(changed))
            for title, record in existing.items():
                if record.source in FLAG_SOURCES and title not in wanted:
                    records.remove(title)
                    repository.audit.append(actor=who, action="ae-remove",
                                              outcome="removed (flag no longer given)",
                                              detail=describe(record))
        self._changed()
        return kept

    # -- lookups (from the snapshot) ---------------------------------------------------------
    def lookup(self, ae_title: str) -> AeRecord | None:
        known = self._entries().get(ae_title.strip())
        return known.record if known is not None else None

    def admit(self, calling_ae_title: str, address: str) -> Admission:
        """May ``calling_ae_title`` associate from ``address``; with which services?

        Raises :class:`OutOfResources` when the index cannot be read and no snapshot was
        ever loaded."""
        title = calling_ae_title.strip()
        known = self._entries().get(title)
        if known is None:
            return Admission(title, refused=UNKNOWN_AE)
        if not known.allows_address(address):
            return Admission(title, refused=UNLISTED_ADDRESS)
        return Admission(title, known.services)

    def destination(self, ae_title: str) -> Destination | None:
        """The C-MOVE destination or routing target registered as ``ae_title``: an entry
        with ``move_destination`` and a port, reached at its first host; else None."""
        known = self._entries().get(ae_title.strip())
        if known is None:
            return None
        record = known.record
        if not record.move_destination or record.port is None or not record.hosts:
            return None
        return Destination(record.ae_title, record.hosts[0], record.port)

    # -- the snapshot ----------------------------------------------------------------------
    def _changed(self) -> None:
        self._generation += 1
        self._snapshot = None

    def _entries(self) -> dict[str, _Known]:
        snapshot = self._snapshot
        if snapshot is not None and self._fresh(snapshot):
            return snapshot.entries
        # one thread reloads; while it does, the others answer from the previous snapshot
        if not self._reloading.acquire(blocking=snapshot is None):
            assert snapshot is not None
            return snapshot.entries
        try:
            current = self._snapshot
            if current is not None and self._fresh(current):
                return current.entries
            generation = self._generation
            try:
                entries = self._load(current.entries if current is not None else {})
            except IndexUnavailable as error:
                if current is None:
                    raise OutOfResources("the AE registry cannot be read") from error
                log.error("the AE registry cannot be read (going on with the entries "
                          "loaded before): %s", error)
                entries = current.entries
            self._snapshot = _Snapshot(entries, self.monotonic(), generation)
            return entries
        finally:
            self._reloading.release()

    def _fresh(self, snapshot: _Snapshot) -> bool:
        return (snapshot.generation == self._generation
                and self.monotonic() - snapshot.loaded_at < self.max_age_s)

    def _load(self, before: dict[str, _Known]) -> dict[str, _Known]:
        """The entries of the index; an entry unchanged since ``before`` and naming no host
        (whose addresses may have changed) is taken from it, not parsed again."""
        with self.index.unit_of_work() as repository:
            records = repository.application_entities.all()
        entries = {}
        for record in records:
            known = before.get(record.ae_title)
            if known is None or known.record != record or known.names:
                known = self._known(record)
            entries[record.ae_title] = known
        return entries

    def _known(self, record: AeRecord) -> _Known:
        networks: builtins.list[Network] = []
        any_address = names = False
        for host in record.hosts:
            if host == ANY_HOST:
                any_address = True
                continue
            try:
                networks.append(ipaddress.ip_network(host))
                continue
            except ValueError:
                names = True
            addresses = self._addresses(host)
            networks += [ipaddress.ip_network(address) for address in addresses]
        services = frozenset(Service(s) for s in record.services if s in Service._value2member_map_)
        return _Known(record, services, tuple(networks), any_address, names)

    def _addresses(self, name: str) -> builtins.list[str]:
        try:
            addresses = self.resolve(name)
        except OSError as error:
            addresses = []
            if name not in self._unresolved:
                log.warning("AE registry: host name %r does not resolve (%s): no address "
                            "matches it", name, error)
        if addresses:
            self._unresolved.discard(name)
        else:
            self._unresolved.add(name)
        return addresses


def _resolve(name: str) -> list[str]:
    """The addresses a name resolves to (forward only), scope ids dropped."""
    found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]).split("%", 1)[0] for info in found})


def _validated(ae_title: str, hosts: Iterable[str], port: int | None,
               allow: Iterable[Service | str], move_destination: bool
               ) -> tuple[str, dict[str, Any]]:
    try:
        title = check_ae_title(ae_title)
        checked = list(dict.fromkeys(check_host(host) for host in hosts))
    except ValueError as error:
        raise AeRegistryError(str(error)) from None
    if not checked:
        raise AeRegistryError("at least one host is needed (* for any address)")
    if ANY_HOST in checked and len(checked) > 1:
        raise AeRegistryError("* (any address) cannot be combined with other hosts")
    if len(checked) > MAX_HOSTS:
        raise AeRegistryError(f"at most {MAX_HOSTS} hosts")
    if port is not None and not 1 <= port <= 65535:
        raise AeRegistryError(f"port {port} is out of range 1-65535")
    wanted = set()
    for item in allow:
        name = str(item).strip().lower()
        if name not in Service._value2member_map_:
            raise AeRegistryError(f"no service {str(item).strip()!r}: allow any of "
                                  f"{', '.join(s.value for s in Service)}")
        wanted.add(name)
    if move_destination:
        if port is None:
            raise AeRegistryError("a move destination needs a port")
        first = checked[0]
        if first == ANY_HOST or "/" in first:
            raise AeRegistryError("a move destination's first host must be an address or a "
                                  "name to connect to, not * or a network")
    return title, {"hosts": checked, "port": port,
                   "services": [s.value for s in Service if s.value in wanted],
                   "move_destination": move_destination}


def _fields(record: AeRecord) -> dict[str, Any]:
    return {"hosts": list(record.hosts), "port": record.port, "services": list(record.services),
            "move_destination": record.move_destination, "source": record.source}


def _source_flag(source: str) -> str:
    return {Source.PEER_FLAG: "--peer", Source.MODALITY_FLAG: "--modality"}.get(
        Source(source), source)


def describe(record: AeRecord) -> dict[str, Any]:
    """An entry for the audit trail's detail."""
    return {"ae_title": record.ae_title, "hosts": list(record.hosts), "port": record.port,
            "allow": list(record.services), "move_destination": record.move_destination,
            "source": record.source}
