"""The routes of the HTTP API."""

from __future__ import annotations

from aiohttp import web

from service import metrics, readiness
from service.api.v1 import openapi, views


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/verifications", views.start)
    app.router.add_get("/verifications/{id}", views.get)
    app.router.add_delete("/verifications/{id}", views.cancel)
    app.router.add_post("/verifications/{id}/code", views.submit_code)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", readiness.readyz)
    app.router.add_get("/metrics", metrics.metrics_handler)
    app.router.add_get("/openapi.json", openapi.openapi)
