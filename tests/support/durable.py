"""Talking to the Durable Functions surface as the lab does: start, then follow the URLs."""

from __future__ import annotations

import asyncio
from typing import Any

from yarl import URL

from tests.support.api import API_KEY

PHONE = "+14155550100"
WEBHOOK = "/runtime/webhooks/durabletask"
START = "/api/orchestrators/E4_SmsPhoneVerification"
#: The key as Functions takes it; the URLs answered carry it the same way.
CODE = {"code": API_KEY}


def relative(uri: str, **replace: str) -> str:
    """An answered URL, its `{placeholders}` filled, as the test client takes it (no origin)."""
    for name, value in replace.items():
        uri = uri.replace(f"{{{name}}}", value)
    return URL(uri).path_qs


async def start(client: Any, phone: str = PHONE, path: str = START, **params: str) -> Any:
    r = await client.post(path, json=phone, params={**CODE, **params})
    assert r.status == 202, await r.text()
    return await r.json()


async def raise_code(client: Any, links: dict[str, str], code: Any) -> Any:
    url = relative(links["sendEventPostUri"], eventName="SmsChallengeResponse")
    return await client.post(url, json=code)


async def status(client: Any, links: dict[str, str]) -> tuple[int, dict[str, Any]]:
    r = await client.get(relative(links["statusQueryGetUri"]))
    return r.status, await r.json()


async def until_decided(client: Any, links: dict[str, str]) -> dict[str, Any]:
    for _ in range(200):
        code, body = await status(client, links)
        if code != 202:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{links['id']} is still running")
