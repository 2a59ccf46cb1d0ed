"""The services behind WADO-RS and WADO-URI, built once by the composition root and kept in
``app.state.wado`` (routes take them as ``wado: WadoDep``)."""

from __future__ import annotations

import gzip
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from dicomweb.metadata import ENCODING_VERSION, INLINE_UP_TO, encode_instance
from pacs.services.frames import FrameService
from pacs.services.metadata import MetadataService
from pacs.services.retrieve import RetrieveService
from pacs.services.wado import WadoService


class MetadataAnswers:
    """Finished metadata answers by (ETag, base URL, content coding), bounded by bytes: a warm
    600-instance series is then one index look-up and a send. (The JSON gzip middleware would
    spend tens of milliseconds compressing it at each request; here it is done once, fast.)"""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.entries: OrderedDict[tuple[str, str, bool], bytes] = OrderedDict()
        self.size = 0
        self.max_bytes = max_bytes
        self.lock = threading.Lock()

    def get(self, key: tuple[str, str, bool], make: Callable[[], bytes]) -> bytes:
        with self.lock:
            found = self.entries.get(key)
            if found is not None:
                self.entries.move_to_end(key)
                return found
        body = make()
        if key[2]:
            body = gzip.compress(body, compresslevel=1, mtime=0)
        with self.lock:
            if key not in self.entries and len(body) <= self.max_bytes:
                self.entries[key] = body
                self.size += len(body)
                while self.size > self.max_bytes:
                    _, dropped = self.entries.popitem(last=False)
                    self.size -= len(dropped)
        return body


@dataclass(frozen=True)
class WadoServices:
    instances: WadoService
    frames: FrameService
    metadata: MetadataService
    answers: MetadataAnswers = field(default_factory=MetadataAnswers)


def wado_services(
    retrieve: RetrieveService, *, cache_dir: Path | None = None, memory_bytes: int = 256 << 20
) -> WadoServices:
    """``cache_dir``: where series metadata is kept between runs (None: memory only)."""
    instances = WadoService(retrieve=retrieve)
    return WadoServices(
        instances=instances,
        frames=FrameService(wado=instances),
        metadata=MetadataService(
            wado=instances,
            encode=encode_instance,
            version=ENCODING_VERSION,
            inline_up_to=INLINE_UP_TO,
            cache_dir=cache_dir,
            memory_bytes=memory_bytes,
        ),
    )


async def wado_of(request: Request) -> WadoServices:
    wado: WadoServices = request.app.state.wado
    return wado


WadoDep = Annotated[WadoServices, Depends(wado_of)]
