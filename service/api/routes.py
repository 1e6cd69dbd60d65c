"""The routes of the HTTP edge: the public operations, then each API surface as a sub-app."""

from __future__ import annotations

from aiohttp import web

from service.api import durable, operations, twilio, v1
from service.api.keys import settings_key


def setup_routes(app: web.Application) -> None:
    settings = app[settings_key]
    app.add_routes(operations.PUBLIC)
    app.add_subapp(v1.PREFIX, v1.create_v1(settings))
    # One sub-app per prefix (aiohttp mounts an app once), all built alike, on the same handlers.
    app.add_subapp(durable.WEBHOOK, durable.create_webhook(settings))
    for prefix in durable.STARTERS:
        app.add_subapp(prefix, durable.create_starter(settings))
    if settings.verify_v2.enabled:
        app.add_routes(operations.TWILIO_PUBLIC)
        app.add_subapp(twilio.PREFIX, twilio.create_twilio(settings))
