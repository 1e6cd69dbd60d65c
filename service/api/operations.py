"""The operations routes: health, readiness, metrics and the API's document, on the root app.

These are the service's public routes, each one chosen and listed in `PUBLIC`, each surface's
OpenAPI document among them; every other route belongs to an API surface, a sub-application
behind that surface's own auth. The root app answers their errors, those of paths no surface
claims and the stop's 503 in the service's own format, v1's `{"error": ...}`.
"""

from __future__ import annotations

from aiohttp import web

from service import metrics, readiness
from service.api import durable
from service.api.durable import openapi as durable_openapi
from service.api.keys import store_key
from service.api.twilio import openapi as twilio_openapi
from service.api.v1 import openapi


async def healthz(request: web.Request) -> web.Response:
    """200 while the database takes writes; 503 while it does not, so the process is replaced."""
    store = request.config_dict[store_key]
    if store.healthy or await store.probe():
        return web.json_response({"status": "ok"})
    body = {"status": "unavailable", "reason": "the database does not take writes"}
    return web.json_response(body, status=503, headers={"Retry-After": "1"})


#: The routes anyone who reaches the port may call, without an API key (and HEAD beside each).
PUBLIC = (
    web.get("/healthz", healthz),
    web.get("/readyz", readiness.readyz),
    web.get("/metrics", metrics.metrics_handler),
    web.get("/openapi.json", openapi.openapi),
    # Each surface's document beside it; the root resolves it before the surface's prefix.
    web.get(durable.DOCUMENT, durable_openapi.openapi),
)

#: The Twilio surface's document, public like ours, served by the root app beside the surface.
TWILIO_PUBLIC = (web.get("/v2/openapi.json", twilio_openapi.openapi),)
