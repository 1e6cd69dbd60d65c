"""The routes of the HTTP edge: the public operations, then each API surface as a sub-app."""

from __future__ import annotations

from aiohttp import web

from service.api import operations, twilio, v1
from service.api.keys import settings_key


def setup_routes(app: web.Application) -> None:
    app.add_routes(operations.PUBLIC)
    settings = app[settings_key]
    app.add_subapp(v1.PREFIX, v1.create_v1(settings))
    if settings.verify_v2.enabled:
        app.add_routes(operations.TWILIO_PUBLIC)
        app.add_subapp(twilio.PREFIX, twilio.create_twilio(settings))
