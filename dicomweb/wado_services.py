"""The services behind WADO-RS and WADO-URI, built once by the composition root (or, when a
``Web`` is made without them, from its retrieve service with an in-memory cache only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomweb.metadata import ENCODING_VERSION, INLINE_UP_TO, encode_instance
from pacs.services.frames import FrameService
from pacs.services.metadata import MetadataService
from pacs.services.retrieve import RetrieveService
from pacs.services.wado import WadoService


@dataclass(frozen=True)
class WadoServices:
    instances: WadoService
    frames: FrameService
    metadata: MetadataService


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
