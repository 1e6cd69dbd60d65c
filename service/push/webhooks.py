"""Webhooks: every outcome POSTed, signed (Standard Webhooks), to each configured endpoint.

The store writes one delivery per outcome and endpoint in the transaction that records the final
state (`Store.finish`), as it writes the SQS outbox record. Each endpoint has a deliverer of its
own, with its own connections, so a receiver that hangs or is down delays neither SQS nor the
other endpoints. A delivery is done once the receiver answered 2xx; any other answer, a time-out
or a refused connection is tried again with exponential back-off and jitter until its horizon
(then dropped, logged and counted); 410 Gone disables the endpoint. Redirects are not followed,
answers are read only up to `max_response_bytes`, and the addresses a name resolves to are
checked at each connection (private ones refused unless the endpoint allows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from notifier.events import EVENT
from service.models import rfc3339
from service.push.endpoints import Endpoint, WebhookSettings, is_public
from service.store.base import WebhookDelivery, WebhookOutbox

__all__ = ["Deliverer", "WebhookObserver", "Webhooks", "payload"]

log = logging.getLogger(__name__)

#: Deliveries read, and sent at once, per round for one endpoint.
READ_LIMIT = 16
#: The store failing is looked at again this often; it must not end a deliverer.
STORE_RETRY_SECONDS = 1.0
#: As the publisher's: a timer firing a little early would only find nothing due.
TIMER_MARGIN = 0.002
USER_AGENT = "phone-verification-webhooks/1"


class WebhookObserver(Protocol):
    def webhook_delivered(self, endpoint: str) -> None:
        """A receiver answered 2xx."""

    def webhook_failed(self, endpoint: str, reason: str) -> None:
        """An attempt failed; `reason` is one of a few words (status_5xx, timeout, ...)."""

    def webhook_dropped(self, endpoint: str, count: int) -> None:
        """Outcomes given up: their horizon passed, or the endpoint was disabled."""


class AddressRefused(OSError):
    """The endpoint's name resolved to an address it may not reach (private, loopback, ...)."""


class GuardedResolver(AbstractResolver):
    """Resolves as aiohttp does, then refuses private addresses: checked at each connection,
    on the very addresses connected to, so a name re-pointed after the start (DNS rebinding)
    cannot reach the service's own network.
    """

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            if not is_public(ipaddress.ip_address(result["host"])):
                raise AddressRefused(f"{host} resolves to {result['host']}, a private address")
        return results

    async def close(self) -> None:
        await self._resolver.close()


def payload(delivery: WebhookDelivery) -> str:
    """The body POSTed: Standard Webhooks' envelope around the outcome event, as on SQS.

    Built from the stored body as it is (no re-encoding), so `data` is the very bytes SQS gets;
    the same on every attempt, so a receiver may hash it too.
    """
    stamp = rfc3339(delivery.created_at)
    return f'{{"type":"{EVENT}","timestamp":"{stamp}","data":{delivery.body}}}'


def webhook_id(delivery: WebhookDelivery) -> str:
    """Stable per outcome, across attempts, restarts and replicas: receivers dedupe by it."""
    return f"msg_{delivery.verification_id}"


class Deliverer:
    """Delivers one endpoint's outcomes whenever woken, or when a retry falls due."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        endpoint: Endpoint,
        settings: WebhookSettings,
        session: aiohttp.ClientSession,
        observer: WebhookObserver,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self.endpoint = endpoint
        self._settings = settings
        self._session = session
        self._observer = observer
        self._clock = clock
        self._rng = rng or random.Random()
        self._signers = endpoint.signers
        self._woken = asyncio.Event()
        self._failing = False
        self.disabled = False

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        """Deliver until cancelled or disabled, starting with what a restart left undelivered."""
        self._woken.set()
        while not self.disabled:
            await self._wait_for_work()
            self._woken.clear()
            try:
                while not self.disabled and await self._deliver_some():
                    pass
            except Exception as exc:
                log.warning(
                    "webhook %s: cannot read or update its deliveries (%r); again in %gs",
                    self.endpoint.name,
                    exc,
                    STORE_RETRY_SECONDS,
                )
                await asyncio.sleep(STORE_RETRY_SECONDS)
                self._woken.set()

    async def _deliver_some(self) -> bool:
        """One read of what is due, delivered at once; True if there was any."""
        due = await self._outbox.webhooks_due(self.endpoint.name, READ_LIMIT, self._clock())
        if not due:
            return False
        await asyncio.gather(*map(self._deliver, due))
        return True

    async def _wait_for_work(self) -> None:
        if self._woken.is_set():
            return
        try:
            due = await self._outbox.webhook_next_due(self.endpoint.name)
        except Exception:
            due = self._clock() + STORE_RETRY_SECONDS
        timeout = None if due is None else max(0.0, due - self._clock()) + TIMER_MARGIN
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        status, problem = await self._attempt(delivery)
        name = self.endpoint.name
        if 200 <= status < 300:
            await self._outbox.webhook_delivered(delivery.seq)
            self._observer.webhook_delivered(name)
            if self._failing:
                self._failing = False
                log.info("webhook %s takes outcomes again", name)
            return
        if status == 410:
            await self._disable(problem)
            return
        reason = _reason(status, problem)
        self._observer.webhook_failed(name, reason)
        self._failing = True
        now = self._clock()
        deadline = delivery.created_at + self.endpoint.horizon_seconds
        if now >= deadline:
            await self._outbox.webhook_dropped(delivery.seq, problem)
            self._observer.webhook_dropped(name, 1)
            log.error(
                "webhook %s: the outcome of verification %s is dropped, undelivered after"
                " %d attempts over its horizon of %gs; last: %s",
                name,
                delivery.verification_id,
                delivery.attempts + 1,
                self.endpoint.horizon_seconds,
                problem,
            )
            return
        wait = self._backoff(delivery.attempts)
        await self._outbox.webhook_failed(delivery.seq, min(now + wait, deadline), problem)
        log.warning(
            "webhook %s: verification %s not delivered (attempt %d: %s); again in %.3gs",
            name,
            delivery.verification_id,
            delivery.attempts + 1,
            problem,
            wait,
        )

    def _backoff(self, attempts: int) -> float:
        """Doubling from the first wait up to the maximum, each drawn in its upper half."""
        first, longest = self._settings.retry_first_seconds, self._settings.retry_max_seconds
        wait = min(first * 2 ** min(attempts, 32), longest)
        return self._rng.uniform(wait / 2, wait)

    async def _attempt(self, delivery: WebhookDelivery) -> tuple[int, str]:
        """POST once: the answer's status (0 when none came) and what went wrong, if anything."""
        body = payload(delivery)
        msg_id = webhook_id(delivery)
        now = int(self._clock())
        stamp = datetime.fromtimestamp(now, tz=UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            # Signed under every secret: a receiver holding any one of them accepts it.
            "webhook-signature": " ".join(s.sign(msg_id, stamp, body) for s in self._signers),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        timeout = aiohttp.ClientTimeout(total=self.endpoint.timeout_seconds)
        try:
            async with self._session.post(
                self.endpoint.url,
                data=body.encode(),
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                if 200 <= response.status < 300:
                    return response.status, ""
                # Only this much of an answer is read, whatever the receiver sends.
                head = await response.content.read(self._settings.max_response_bytes)
                text = head.decode(errors="replace").strip()
                return response.status, f"HTTP {response.status} {text}".strip()
        except TimeoutError:
            return 0, f"no answer within {self.endpoint.timeout_seconds:g}s"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return 0, f"refused address: {exc.os_error}"
            return 0, f"unreachable: {exc}"
        except aiohttp.ClientError as exc:
            return 0, f"error: {exc!r}"

    async def _disable(self, problem: str) -> None:
        name = self.endpoint.name
        self.disabled = True
        dropped = await self._outbox.disable_webhook(name, problem)
        self._observer.webhook_failed(name, "gone")
        if dropped:
            self._observer.webhook_dropped(name, dropped)
        log.error(
            "webhook %s DISABLED: %s answered 410 Gone; %d undelivered outcome(s) dropped, and"
            " no more are sent to it until its url changes in the configuration",
            name,
            self.endpoint.url,
            dropped,
        )


def _reason(status: int, problem: str) -> str:
    """The `reason` label of a failed attempt."""
    if status:
        return "redirect" if 300 <= status < 400 else f"status_{status // 100}xx"
    if problem.startswith("no answer"):
        return "timeout"
    if problem.startswith("refused address"):
        return "refused_address"
    if problem.startswith("unreachable"):
        return "unreachable"
    return "error"


class Webhooks:
    """Every endpoint's deliverer, each in a task and with connections of its own."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        settings: WebhookSettings,
        observer: WebhookObserver,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._observer = observer
        self._clock = clock
        self.deliverers: list[Deliverer] = []

    def wake(self) -> None:
        """Call right after committing outcomes."""
        for deliverer in self.deliverers:
            deliverer.wake()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver while inside. At the exit, attempts in flight are cut short: undelivered,
        they go again after the next start (a receiver may so see one twice: it dedupes).
        """
        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            for endpoint in self._settings.endpoints:
                resolver = None if endpoint.allow_private else GuardedResolver()
                connector = aiohttp.TCPConnector(resolver=resolver, limit=READ_LIMIT)
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(connector=connector)
                )
                deliverer = Deliverer(
                    self._outbox,
                    endpoint,
                    self._settings,
                    session,
                    self._observer,
                    clock=self._clock,
                )
                self.deliverers.append(deliverer)
                task = asyncio.create_task(deliverer.run(), name=f"webhook-{endpoint.name}")
                task.add_done_callback(_ended)
                tasks.append(task)
                log.info("delivering outcomes to webhook %s at %s", endpoint.name, endpoint.url)
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def _ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a webhook deliverer stopped: its outcomes wait", exc_info=task.exception())
