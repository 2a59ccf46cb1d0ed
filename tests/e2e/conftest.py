"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dcmtk


@pytest.fixture
def workstation(tmp_path: Path) -> Iterator[dcmtk.Storescp]:
    """A DCMTK storescp as the routing target WS1, its files under ``tmp_path/ws``."""
    peer = dcmtk.Storescp(tmp_path / "ws", ae_title="WS1").start()
    try:
        yield peer
    finally:
        peer.stop()
