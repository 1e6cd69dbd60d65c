"""The load driver's HTTP side: the verification API, and the fake Twilio's record of codes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.stack import API_KEY

#: Generous: a slow answer is a figure to report, a hung one must still end the run.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)


class RequestFailed(Exception):
    pass


@dataclass(frozen=True)
class Timed:
    status: int
    body: dict[str, Any]
    #: perf_counter seconds the request took.
    seconds: float
    #: time.time() when the answer was read.
    at: float


def session(concurrency: int) -> aiohttp.ClientSession:
    """One keep-alive connection per concurrent request at most, to each host."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency, ttl_dns_cache=None)
    return aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT)


class Api:
    """The service's HTTP API, each call timed."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {API_KEY}"}
        self.requests = 0

    async def call(self, method: str, path: str, json: Any = None, expect: int = 200) -> Timed:
        self.requests += 1
        t0 = time.perf_counter()
        async with self.http.request(
            method, self.base_url + path, json=json, headers=self.headers
        ) as r:
            body = await r.json(content_type=None)
        timed = Timed(r.status, body, time.perf_counter() - t0, time.time())
        if r.status != expect:
            raise RequestFailed(f"{method} {path} answered {r.status}, not {expect}: {body}")
        return timed

    async def start(self, phone: str) -> Timed:
        return await self.call("POST", "/verifications", {"phone": phone}, expect=202)

    async def submit(self, verification_id: str, code: str) -> Timed:
        return await self.call("POST", f"/verifications/{verification_id}/code", {"code": code})

    async def get(self, verification_id: str) -> Timed:
        return await self.call("GET", f"/verifications/{verification_id}")


class Sms:
    """The fake Twilio: what it was asked to send."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def code(self, phone: str, timeout: float = 30.0) -> str:  # noqa: ASYNC109
        """The code in the next SMS to `phone`, waiting for it on the server side."""
        params = {"to": phone, "timeout": str(timeout)}
        async with self.http.get(f"{self.base_url}/_bench/code", params=params) as r:
            body = await r.json()
        if r.status != 200 or not body.get("code"):
            raise RequestFailed(f"no SMS with a code reached {phone}: {body}")
        return str(body["code"])

    async def count(self) -> int:
        async with self.http.get(f"{self.base_url}/_bench/count") as r:
            return int((await r.json())["messages"])
