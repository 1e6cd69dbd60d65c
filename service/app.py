"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from service.codes import CodeBook, load_secret
from service.config import Settings
from service.errors import ConfigError
from service.middlewares import authentication, errors
from service.orchestrator import Orchestrator
from service.recovery import recover
from service.routes import setup_routes
from service.sms import create_sender
from service.store import Store
from service.typedefs import orchestrator_key, settings_key, store_key

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    """Build the app; the database, SMS sender and orchestrator open when it starts."""
    check_access(settings)
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[errors, authentication(settings.auth.api_keys)],
    )
    app[settings_key] = settings
    app.cleanup_ctx.append(_domain)
    setup_routes(app)
    return app


def check_access(settings: Settings) -> None:
    if settings.auth.api_keys:
        return
    if not settings.auth.allow_unauthenticated:
        raise ConfigError(
            "No API key is configured (auth.api_keys or VERIFY_AUTH_API_KEYS). Set one, or set"
            " auth.allow_unauthenticated = true to run without authentication."
        )
    log.warning("AUTHENTICATION IS OFF: anyone who reaches this port can send SMS on your account")


async def _domain(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    codes = CodeBook(load_secret(settings.database), settings.verification.code_length)
    sender = create_sender(settings.sms)
    store = await Store.open(settings.database.path)
    orchestrator = Orchestrator(
        store, sender, codes, settings.verification, settings.sms.template, clock=time.time
    )
    app[store_key] = store
    app[orchestrator_key] = orchestrator
    try:
        await recover(store, orchestrator, time.time)
        yield
    finally:
        await orchestrator.close(settings.server.shutdown_grace_seconds)
        await sender.close()
        await store.close()
