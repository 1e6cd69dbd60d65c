"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notifier.queues import resolve_queue_url, sqs_client
from notifier.settings import QueueSettings
from service.api.keys import orchestrator_key, settings_key, store_key
from service.api.routes import setup_routes
from service.api.v1.middlewares import authentication, errors
from service.codes import CodeBook, load_secret
from service.config import Settings
from service.errors import ConfigError
from service.limits import Limits, check_settings
from service.metrics import Metrics, metrics_key, metrics_middleware
from service.orchestrator.orchestrator import Orchestrator
from service.orchestrator.recovery import recover
from service.push.sqs import Publisher
from service.readiness import Readiness, readiness_key
from service.retention import keep_sweeping
from service.sms.base import create_sender
from service.sms.challenge import Challenges
from service.store.sqlite.store import Store

log = logging.getLogger(__name__)

#: How long a stop waits, once the orchestrator has stopped, for its last outcomes to reach SQS.
FLUSH_SECONDS = 1.0


def create_app(settings: Settings) -> web.Application:
    """Build the app; the database, SMS sender and orchestrator open when it starts."""
    check_access(settings)
    check_settings(settings.limits)
    check_queue(settings.queue)
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[metrics_middleware(metrics), errors, authentication(settings.auth.api_keys)],
    )
    app[settings_key] = settings
    app[metrics_key] = metrics
    app[readiness_key] = Readiness()
    # Unwound in reverse: the orchestrator stops first, then the publisher sends what it decided
    # meanwhile, then the store closes.
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_outcomes)
    app.cleanup_ctx.append(_domain)
    app.on_shutdown.append(_stop_domain)
    setup_routes(app)
    return app


def check_queue(settings: QueueSettings) -> None:
    # A refused record offered again at once would keep the publisher spinning on it.
    if not 0 < settings.refused_retry_seconds <= settings.refused_retry_max_seconds:
        raise ConfigError(
            "Config 'queue.refused_retry_seconds' must be positive, and at most"
            " 'queue.refused_retry_max_seconds'."
        )


def check_access(settings: Settings) -> None:
    if settings.auth.api_keys:
        return
    if not settings.auth.allow_unauthenticated:
        raise ConfigError(
            "No API key is configured (auth.api_keys or VERIFY_AUTH_API_KEYS). Set one, or set"
            " auth.allow_unauthenticated = true to run without authentication."
        )
    log.warning("AUTHENTICATION IS OFF: anyone who reaches this port can send SMS on your account")


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    store = await Store.open(
        settings.database.path, busy_timeout_ms=settings.database.busy_timeout_ms
    )
    app[store_key] = store
    app[readiness_key].add("store", lambda: store.healthy)
    yield
    await store.close()


async def _domain(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    codes = CodeBook(load_secret(settings.database), settings.verification.code_length)
    sender = create_sender(settings.sms, has_api_keys=bool(settings.auth.api_keys))
    store = app[store_key]
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
        sweeper = asyncio.create_task(
            keep_sweeping(store, settings.retention, time.time, metrics.outcomes_dropped)
        )
        yield
    finally:
        if sweeper is not None:
            sweeper.cancel()
        # Closed at the stop's start already (`_stop_domain`): this one is for a failed start-up.
        await orchestrator.close(settings.server.shutdown_grace_seconds)
        await sender.close()


async def _stop_domain(app: web.Application) -> None:
    """At the stop's start, not at its cleanup: the orchestrator's grace runs beside the requests'.

    aiohttp runs `on_shutdown` once the socket is closed and before it waits for the requests in
    flight, so the two share one grace, and the cleanup, publisher's flush included, comes after
    every decision is made.
    """
    await app[orchestrator_key].close(app[settings_key].server.shutdown_grace_seconds)


async def _outcomes(app: web.Application) -> AsyncIterator[None]:
    """Push the outbox to SQS, from a task of its own: the service works while SQS does not."""
    settings = app[settings_key]
    if not settings.queue.enabled:
        log.warning("queue publishing is off: outcomes stay in the outbox")
        yield
        return
    async with sqs_client(settings.queue) as client:
        publisher = _publisher(client, settings.queue, app[store_key], app[metrics_key])
        app[readiness_key].add("publisher", lambda: publisher.up)
        task = asyncio.create_task(publisher.run(), name="publisher")
        task.add_done_callback(_ended)
        yield
        # The orchestrator has stopped (its context unwinds first): what it decided meanwhile
        # goes out now if SQS takes it in time, else at the next start.
        await publisher.flush(min(FLUSH_SECONDS, settings.server.shutdown_grace_seconds))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _publisher(client: Any, settings: QueueSettings, store: Store, metrics: Metrics) -> Publisher:
    publisher = Publisher(
        store,
        client,
        lambda: resolve_queue_url(client, settings),
        fifo=settings.fifo,
        retry_delays=settings.retry_delays,
        refused_delays=(settings.refused_retry_seconds, settings.refused_retry_max_seconds),
        signing_key=settings.signing_key,
    )
    publisher.on_failure = metrics.publish_failed
    publisher.on_refused = metrics.outcome_refused
    metrics.watch_publisher(lambda: publisher.up)
    store.on_outcome = publisher.wake
    return publisher


def _ended(task: asyncio.Task[None]) -> None:
    # It retries every failure for ever, so this is a bug; never let it pass in silence.
    if not task.cancelled() and task.exception() is not None:
        log.error("the publisher stopped: outcomes stay in the outbox", exc_info=task.exception())
