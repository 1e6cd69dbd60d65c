"""Webhook receivers for the tests, both verifying with the `standardwebhooks` library.

- `ReceiverProcess`: `python -m notifier webhook` as a real process, its JSON lines read back.
- `FakeReceiver`: an aiohttp server on loopback told how to answer (500 for a while, 410, a
  redirect, hanging), recording every request and whether its signature verified.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.support.process import ROOT, free_port

SECRET = "whsec_" + base64.b64encode(b"test-webhook-secret-0123456789ab").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-webhook-secret-987654321").decode()


def endpoint(name: str, url: str, secret: str = SECRET, **keys: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "secrets": [secret],
        "allow_private": True,
        "timeout_seconds": 2.0,
        **keys,
    }


def webhooks_section(*endpoints: dict[str, Any]) -> dict[str, Any]:
    """`[webhooks]` with quick retries, for make_client."""
    return {"retry_first_seconds": 0.05, "retry_max_seconds": 0.2, "endpoints": list(endpoints)}


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    #: The outcome (`data`) if the signature verified under SECRET, else None.
    outcome: dict[str, Any] | None
    at: float


class FakeReceiver:
    """Answers each POST to / with `answer(n)` for the n-th request (0-based): a status, or
    "hang" (never answers). A redirect goes to /elsewhere, which records what reaches it.
    """

    def __init__(self, answer: Callable[[int], int | str] = lambda n: 204) -> None:
        self.answer = answer
        self.hits: list[Hit] = []
        self.elsewhere: list[Hit] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._verifier = Webhook(SECRET)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def __aenter__(self) -> FakeReceiver:
        app = web.Application()
        app.router.add_post("/", self._handle)
        app.router.add_route("*", "/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def verified(self) -> list[dict[str, Any]]:
        return [h.outcome for h in self.hits if h.outcome is not None]

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Hit]:
        deadline = time.monotonic() + seconds
        while len(self.hits) < count:
            assert time.monotonic() < deadline, f"{len(self.hits)} of {count} requests came"
            await asyncio.sleep(0.02)
        return self.hits

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        try:
            outcome = self._verifier.verify(body, headers)["data"]
        except WebhookVerificationError:
            outcome = None
        answer = self.answer(len(self.hits))
        self.hits.append(Hit(headers, body, outcome, time.time()))
        if answer == "hang":
            await asyncio.sleep(3600)
        assert isinstance(answer, int)
        if 300 <= answer < 400:
            return web.Response(status=answer, headers={"Location": "/elsewhere"})
        return web.Response(status=answer, text="x" * 100_000 if answer >= 400 else "")

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere.append(Hit(dict(request.headers), await request.read(), None, time.time()))
        return web.Response(status=204)


class ReceiverProcess:
    """`python -m notifier webhook` on a port of its own; `lines` are the outcomes it printed."""

    def __init__(self, port: int | None = None, secrets: tuple[str, ...] = (SECRET,)) -> None:
        self.port = port or free_port()
        self.secrets = secrets
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, cwd: Path) -> None:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        args = [arg for s in self.secrets for arg in ("--secret", s)]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "notifier", "webhook", "--port", str(self.port), *args),
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": path},
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(self.url) as r:  # 405: it listens
                        if r.status:
                            return
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        raise TimeoutError("the webhook receiver did not listen")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(json.loads(line))

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while len(self.lines) < count:
            assert time.monotonic() < deadline, f"{len(self.lines)} of {count} outcomes printed"
            await asyncio.sleep(0.02)
        return self.lines

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 10)
        if self._reader is not None:
            await self._reader
