"""Readiness: whether this instance can do its work now, answered at `GET /readyz`.

Liveness (`/healthz`) says the process answers and its database takes writes; readiness says
all its parts do: each part adds a check, a quick call that must not wait on I/O, and the
instance is ready when every check passes.
A load balancer or orchestrator stops sending work while one fails, and an alert can say which.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

Check = Callable[[], bool]


class Readiness:
    """Named checks, each True while its part can do its work."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def results(self) -> dict[str, bool]:
        return {name: check() for name, check in self._checks.items()}


readiness_key = web.AppKey("readiness", Readiness)


async def readyz(request: web.Request) -> web.Response:
    results = request.app[readiness_key].results()
    if all(results.values()):
        return web.json_response({"status": "ready"})
    checks = {name: "ok" if ok else "failing" for name, ok in results.items()}
    return web.json_response({"status": "not_ready", "checks": checks}, status=503)
