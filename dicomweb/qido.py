"""QIDO-RS (PS3.18 10.6): being built."""

from __future__ import annotations

from fastapi import APIRouter

from dicomweb.context import Web


def router(web: Web) -> APIRouter:
    return APIRouter(tags=["QIDO-RS"])
