"""Serving an API surface's OpenAPI document: built once per settings, sent as compact JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from service.api.keys import settings_key
from service.config import Settings

Handler = Callable[[web.Request], Awaitable[web.Response]]


def document_handler(build: Callable[[Settings], dict[str, Any]]) -> Handler:
    """A handler answering the document `build` makes of the app's settings."""

    # Keyed by the frozen settings: each app gets the document of its own limits, built once.
    @functools.lru_cache(maxsize=4)
    def rendered(settings: Settings) -> bytes:
        return json.dumps(build(settings), separators=(",", ":")).encode()

    async def handler(request: web.Request) -> web.Response:
        body = rendered(request.config_dict[settings_key])
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    return handler
