"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notifier.publisher import Publisher
from notifier.queues import QueueError, is_transient, resolve_queue_url, sqs_client
from notifier.settings import QueueSettings
from service.challenge import Challenges
from service.codes import CodeBook, load_secret
from service.config import Settings
from service.errors import ConfigError
from service.limits import Limits, check_settings
from service.metrics import Metrics, metrics_key, metrics_middleware
from service.middlewares import authentication, errors
from service.orchestrator import Orchestrator
from service.recovery import recover
from service.retention import keep_sweeping
from service.routes import setup_routes
from service.sms import create_sender
from service.store import Store
from service.typedefs import orchestrator_key, settings_key, store_key

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    """Build the app; the database, SMS sender and orchestrator open when it starts."""
    check_access(settings)
    check_settings(settings.limits)
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[metrics_middleware(metrics), errors, authentication(settings.auth.api_keys)],
    )
    app[settings_key] = settings
    app[metrics_key] = metrics
    app.cleanup_ctx.append(_domain)
    app.cleanup_ctx.append(_outcomes)
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
    store = await Store.open(
        settings.database.path, busy_timeout_ms=settings.database.busy_timeout_ms
    )
    limits = Limits(settings.limits, clock=time.time)
    challenges = Challenges(sender, codes, limits, settings.sms, clock=time.time)
    orchestrator = Orchestrator(
        store,
        challenges,
        codes,
        limits,
        settings.verification,
        settings.database,
        clock=time.time,
    )
    app[store_key] = store
    metrics = app[metrics_key]
    metrics.watch_pending(lambda: orchestrator.pending_count)
    orchestrator.on_started = metrics.started
    orchestrator.on_finished = metrics.finished
    challenges.on_sent = metrics.sms_sent
    challenges.on_failed = metrics.sms_failed
    limits.on_refused = metrics.refused
    app[orchestrator_key] = orchestrator
    sweeper: asyncio.Task[None] | None = None
    try:
        await recover(store, orchestrator, time.time, settings.verification.ttl_seconds)
        sweeper = asyncio.create_task(keep_sweeping(store, settings.retention, time.time))
        yield
    finally:
        if sweeper is not None:
            sweeper.cancel()
        await orchestrator.close(settings.server.shutdown_grace_seconds)
        await sender.close()
        await store.close()


async def _outcomes(app: web.Application) -> AsyncIterator[None]:
    """Push the outbox to SQS, from a task of its own: the service works while SQS does not."""
    settings = app[settings_key].queue
    if not settings.enabled:
        log.warning("queue publishing is off: outcomes stay in the outbox")
        yield
        return
    async with sqs_client(settings) as client:
        task = asyncio.create_task(_publish(client, settings, app[store_key]), name="publisher")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publish(client: Any, settings: QueueSettings, store: Store) -> None:
    url = await _queue_url(client, settings)
    publisher = Publisher(
        store, client, url, fifo=settings.fifo, retry_delays=settings.retry_delays
    )
    store.on_outcome = publisher.wake
    log.info("publishing outcomes to %s", url)
    await publisher.run()


async def _queue_url(client: Any, settings: QueueSettings) -> str:
    """The queue's URL, asked for again with back-off while SQS cannot be reached."""
    for attempt in itertools.count():
        try:
            return await resolve_queue_url(client, settings)
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, QueueError):
                raise
            delay = settings.retry_delays[min(attempt, len(settings.retry_delays) - 1)]
            log.warning("queue not reachable (%s); outcomes wait in the outbox", exc)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
