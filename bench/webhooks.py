"""The webhook side of the driver: a receiver on loopback that verifies each delivery with the
`standardwebhooks` library, as a backend would, and notes when each outcome was held verified.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from bench.outcomes import Arrival
from bench.stack import free_port

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789ab").decode()


class WebhookListener:
    def __init__(self) -> None:
        self.port = free_port()
        self.first: dict[str, Arrival] = {}
        self.requests = 0
        self.refused = 0
        self._verifier = Webhook(SECRET)
        self._waiters: dict[str, asyncio.Future[Arrival]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def env(self) -> dict[str, str]:
        """What points the service's one endpoint, "bench", here."""
        endpoint = {"name": "bench", "url": f"http://127.0.0.1:{self.port}/", "allow_private": True}
        return {
            "VERIFY_WEBHOOKS_ENDPOINTS": json.dumps([endpoint]),
            "VERIFY_WEBHOOKS_BENCH_SECRETS": SECRET,
        }

    async def __aenter__(self) -> WebhookListener:
        app = web.Application()
        app.router.add_post("/", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def wait(self, verification_id: str, timeout: float) -> Arrival:  # noqa: ASYNC109
        if verification_id in self.first:
            return self.first[verification_id]
        future = self._waiters.setdefault(
            verification_id, asyncio.get_running_loop().create_future()
        )
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def _receive(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        try:
            envelope: dict[str, Any] = self._verifier.verify(body, dict(request.headers))
        except Exception:
            self.refused += 1
            return web.Response(status=401)
        event = envelope["data"]
        arrival = Arrival(time.perf_counter(), time.time(), event)
        self.first.setdefault(event["id"], arrival)
        waiter = self._waiters.pop(event["id"], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(arrival)
        return web.Response(status=204)
