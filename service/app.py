"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from service.api.keys import (
    orchestrator_key,
    sender_key,
    settings_key,
    store_key,
)
from service.api.routes import setup_routes
from service.api.v1.errors import errors
from service.backoff import delays
from service.codes import CodeBook, load_secret
from service.collector import Collector
from service.config import Settings
from service.errors import ConfigError, SmsUnavailable, StoreUnavailable
from service.limits import Limits
from service.metrics import Metrics, metrics_key, metrics_middleware
from service.orchestrator.orchestrator import Orchestrator
from service.orchestrator.recovery import recover
from service.orchestrator.tenure import Tenure
from service.push.webhooks import Webhooks
from service.readiness import Readiness, readiness_key
from service.retention import keep_sweeping
from service.sms.base import SmsSender, create_sender
from service.sms.challenge import Challenges
from service.store import Store, open_store

if TYPE_CHECKING:
    from service.push.sqs import Publisher

log = logging.getLogger(__name__)

#: How long a stop waits, once the orchestrator has stopped, for its last outcomes to reach SQS.
FLUSH_SECONDS = 1.0

#: Waits between tries of a recovery the database refused; the last repeats.
RECOVERY_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)
#: Waits between tries to load the SMS sender's SDK; the last repeats.
SENDER_OPEN_DELAYS = (1.0, 5.0, 30.0)

#: What keeps this replica's lease, where replicas share the database.
tenure_key = web.AppKey("tenure", Tenure)


def create_app(settings: Settings) -> web.Application:
    """Build the app; the database, SMS sender and orchestrator open when it starts."""
    check_access(settings)
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[metrics_middleware(metrics), errors],
    )
    app[settings_key] = settings
    app[metrics_key] = metrics
    app[readiness_key] = Readiness()
    # One context per resource, unwound in reverse: the sweeps stop, the orchestrator stops, the
    # publisher sends what it decided meanwhile, then the SMS sender and the store close. Where
    # replicas share the store, its lease is renewed to the last, then this one's work handed over.
    for context in (_store, _sender, _outcomes, _webhooks, _orchestrator, _retention):
        app.cleanup_ctx.append(context)
    app.on_shutdown.append(_stop_domain)
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


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    # Unique among replicas on one database, and the same across restarts of this one.
    replica = f"{socket.gethostname()}:{settings.server.port}"
    webhooks = {e.name: e.url for e in settings.webhooks.endpoints}
    store = await open_store(settings.database, clock=time.time, replica=replica, webhooks=webhooks)
    app[store_key] = store
    app[readiness_key].add("store", lambda: store.healthy)
    if store.lease is not None:
        lease = store.lease
        app[readiness_key].add("lease", lambda: lease.trusted)
    yield
    if tenure_key in app:
        await app[tenure_key].stop()
    await store.close()


async def _sender(app: web.Application) -> AsyncIterator[None]:
    """The SMS sender; what it needs (the Twilio SDK) loads beside the start-up, not before it:
    the service is not ready (`/readyz`) until it has."""
    settings = app[settings_key]
    sender = create_sender(settings.sms, has_api_keys=bool(settings.auth.api_keys))
    app[sender_key] = sender
    app[readiness_key].add("sms", lambda: sender.ready)
    opening = asyncio.create_task(_open(sender), name="sms-sender")
    yield
    opening.cancel()
    await asyncio.gather(opening, return_exceptions=True)
    await sender.close()


async def _open(sender: SmsSender) -> None:
    for delay in delays(SENDER_OPEN_DELAYS):
        try:
            await sender.open()
            return
        except SmsUnavailable as exc:
            # A broken install: not ready, said why, and tried again (a send tries too).
            log.error("the SMS sender cannot send: %s; trying again in %g s", exc, delay)
        await asyncio.sleep(delay)


async def _orchestrator(app: web.Application) -> AsyncIterator[None]:
    """The orchestrator; what was pending is recovered beside the first requests."""
    settings, store, metrics = app[settings_key], app[store_key], app[metrics_key]
    codes = CodeBook(load_secret(settings.database), settings.verification.code_length)
    # By the secret only (once "code_book", the length too): each verification keeps its length.
    if await store.agree("code_secret", codes.fingerprint()) != codes.fingerprint():
        raise ConfigError(
            "Another replica on this database makes its codes with a different secret: give"
            " every replica the same database.secret (or secret_file), else the codes one"
            " sends another refuses."
        )
    limits = Limits(settings.limits, clock=time.time, observer=metrics, tally=store.tally)
    services = settings.verify_v2.all_services() if settings.verify_v2.enabled else ()
    challenges = Challenges(
        app[sender_key],
        codes,
        limits,
        settings.sms,
        clock=time.time,
        observer=metrics,
        templates={s.sid: s.template for s in services if s.template},
    )
    # The longest a code lives, whichever Service made it: deadlines found longer are capped.
    ttl = max([settings.verification.ttl_seconds, *(s.ttl_seconds for s in services)])
    orchestrator = Orchestrator(
        store,
        challenges,
        codes,
        limits,
        settings.verification,
        settings.database,
        clock=time.time,
        observer=metrics,
        longest_ttl=ttl,
    )
    metrics.watch_pending(lambda: orchestrator.pending_count)
    app[orchestrator_key] = orchestrator
    tenure = None
    if store.lease is not None:
        # Renewing before recovery, which may take longer than a lease. Stopped by the store's
        # context, not this one: the lease holds while the last verifications finish and their
        # outcomes are flushed, until the store hands the rest over.
        tenure = app[tenure_key] = Tenure(store, store.lease, orchestrator, time.time, ttl, metrics)
        tenure.start()
    collector = Collector(lambda: orchestrator.pending_count)
    recovery = asyncio.create_task(_recover(store, orchestrator, ttl, tenure, collector))
    try:
        yield
    finally:
        recovery.cancel()
        await asyncio.gather(recovery, return_exceptions=True)
        await collector.stop()
        # Closed at the stop's start already (`_stop_domain`): this one is for a failed start-up.
        await orchestrator.close(settings.server.shutdown_grace_seconds)


async def _recover(
    store: Store,
    orchestrator: Orchestrator,
    ttl: float,
    tenure: Tenure | None,
    collector: Collector,
) -> None:
    """Recover beside the requests, again until it succeeds; then adopt, and keep the heap."""
    for delay in delays(RECOVERY_RETRY_DELAYS):
        try:
            await recover(store, orchestrator, time.time, ttl)
            break
        except StoreUnavailable as exc:
            log.warning("recovery could not read the database (%s): trying again", exc)
        except Exception:
            log.exception("recovery failed: trying again")
        await asyncio.sleep(delay)
    collector.freeze()  # what recovery armed waits for minutes: out of the collector's sight
    collector.start()
    if tenure is not None:
        tenure.start_adopting()


async def _retention(app: web.Application) -> AsyncIterator[None]:
    settings, metrics = app[settings_key], app[metrics_key]
    sweeper = asyncio.create_task(
        keep_sweeping(app[store_key], settings.retention, time.time, metrics.outcomes_dropped)
    )
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper


async def _stop_domain(app: web.Application) -> None:
    """At the stop's start, not at its cleanup: the orchestrator's grace runs beside the requests'.

    aiohttp runs `on_shutdown` once the socket is closed and before it waits for the requests in
    flight, so the two share one grace, and the cleanup, publisher's flush included, comes after
    every decision is made.
    """
    # Nothing is adopted while stopping: what this replica holds is handed over at the close.
    if tenure_key in app:
        app[tenure_key].stop_adopting()
    await app[orchestrator_key].close(app[settings_key].server.shutdown_grace_seconds)


async def _outcomes(app: web.Application) -> AsyncIterator[None]:
    """Push the outbox to SQS, from a task of its own: the service works while SQS does not.

    The publisher starts once the service listens: botocore and aioboto3 take a fifth of a
    second to import (in a thread, here) and the SQS client as long to make, and a restart must
    answer at once. What is decided meanwhile waits in the outbox, and goes out first.
    """
    settings, store, metrics = app[settings_key], app[store_key], app[metrics_key]
    if not settings.queue.enabled:
        log.warning("queue publishing is off: outcomes stay in the outbox")
        yield
        return
    publishers: list[Publisher] = []  # the one, once running

    def up() -> bool:
        return bool(publishers) and publishers[0].up

    def wake() -> None:
        if publishers:
            publishers[0].wake()

    app[readiness_key].add("publisher", up)
    metrics.watch_publisher(up)
    store.on_outcome = wake
    stopping = asyncio.Event()
    flush = min(FLUSH_SECONDS, settings.server.shutdown_grace_seconds)
    task = asyncio.create_task(_publish(app, publishers, stopping, flush), name="publishing")
    try:
        yield
    finally:
        # The orchestrator has stopped (its context unwinds first): what it decided meanwhile
        # goes out now if SQS takes it in time, else at the next start. A publisher still
        # starting gets that time too, to start and send.
        stopping.set()
        done, _ = await asyncio.wait({task}, timeout=flush if not publishers else None)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _publish(
    app: web.Application, publishers: list[Publisher], stopping: asyncio.Event, flush: float
) -> None:
    settings, store, metrics = app[settings_key], app[store_key], app[metrics_key]
    for delay in delays(settings.queue.retry_delays):
        try:
            sqs = await asyncio.to_thread(importlib.import_module, "service.push.sqs")
            publisher: Publisher = sqs.Publisher(store, settings.queue, observer=metrics)
            async with publisher.running(flush):
                publishers.append(publisher)
                await stopping.wait()
            return
        except Exception:
            # The client could not be made (credentials not found yet, say): nothing is lost,
            # the outbox keeps it all, and it is tried again.
            log.exception("the SQS publisher could not start: trying again in %g s", delay)
            publishers.clear()
        if stopping.is_set():
            return
        await asyncio.sleep(delay)


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """POST every outcome to each webhook endpoint, beside SQS and independent of it."""
    settings, store, metrics = app[settings_key], app[store_key], app[metrics_key]
    if not settings.webhooks.endpoints:
        yield
        return
    webhooks = Webhooks(store, settings.webhooks, metrics)
    metrics.watch_webhooks([e.name for e in settings.webhooks.endpoints])
    publisher_wake = store.on_outcome

    def wake() -> None:
        publisher_wake()
        webhooks.wake()

    store.on_outcome = wake
    async with webhooks.running():
        yield
