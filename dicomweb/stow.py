"""STOW-RS (PS3.18 10.5): being built."""

from __future__ import annotations

from fastapi import APIRouter

from dicomweb.context import Web


def router(web: Web) -> APIRouter:
    return APIRouter(tags=["STOW-RS"])
