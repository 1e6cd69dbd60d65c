"""Talking to the service in tests: the API key they use, and the calls most tests make."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from service.config import Settings

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

#: The conftest fixtures `make_settings` and `make_client`.
MakeSettings = Callable[..., Settings]
MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


async def start(
    client: TestClient[web.Request, web.Application], phone: str = "+14155550100", **body: Any
) -> dict[str, Any]:
    r = await client.post("/verifications", json={"phone": phone, **body}, headers=AUTH)
    assert r.status == 202, await r.text()
    view: dict[str, Any] = await r.json()
    return view


async def submit(
    client: TestClient[web.Request, web.Application], verification_id: str, code: str
) -> tuple[int, dict[str, Any]]:
    r = await client.post(
        f"/verifications/{verification_id}/code", json={"code": code}, headers=AUTH
    )
    return r.status, await r.json()


def wrong(code: str) -> str:
    """A code of the same form that is certainly not `code`."""
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"
