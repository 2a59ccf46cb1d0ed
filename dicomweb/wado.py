"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9): being built."""

from __future__ import annotations

from fastapi import APIRouter

from dicomweb.context import Web


def router(web: Web) -> APIRouter:
    return APIRouter(tags=["WADO-RS"])


def uri_router(web: Web) -> APIRouter:
    return APIRouter(tags=["WADO-URI"])
