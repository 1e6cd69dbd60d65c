"""The publisher: drains the service's outbox of outcomes to SQS, at least once.

The service commits an outcome and its outbox record in one transaction, then calls `wake()`.
A record is marked sent only after SQS has accepted it, so a crash or an outage at any point
means it is sent again later; consumers dedupe by verification id. The publisher opens its own
SQS client from the queue settings and finds the queue itself, so the app only starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from botocore import exceptions as boto  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from notifier.events import SIGNATURE_ATTRIBUTE, sign
from notifier.queues import (
    NOT_FOUND_CODES,
    QueueNotFound,
    SqsClient,
    error_code,
    is_transient,
    resolve_queue_url,
    sqs_client,
)
from notifier.settings import QueueSettings
from service.backoff import delays
from service.observers import IGNORED, Observer
from service.store.base import Outbox, OutboxRecord

__all__ = ["Publisher", "failure_reason"]

log = logging.getLogger(__name__)

#: SQS takes at most ten entries per SendMessageBatch.
BATCH_SIZE = 10
READ_LIMIT = 100
#: While a stop flushes, failed attempts are retried this often at most, whatever the back-off.
FLUSH_RETRY_SECONDS = 0.1
#: A timer may fire a little early (uvloop rounds to the millisecond); waking before a deferred
#: record is due would only find nothing to send and read the outbox again.
TIMER_MARGIN = 0.002

#: Codes for a message SQS will never take, however often it is sent.
REFUSED_CODES = frozenset(
    {
        "InvalidMessageContents",
        "MessageTooLong",
        "BatchRequestTooLong",
        "InvalidParameterValue",
        "InvalidAttributeValue",
        "InvalidAttributeName",
    }
)
CREDENTIAL_ERRORS = (
    boto.NoCredentialsError,
    boto.PartialCredentialsError,
    boto.CredentialRetrievalError,
)


class EntriesFailed(Exception):
    """SQS answered, but failed some entries for reasons of its own; they are worth retrying."""


@dataclass
class BatchResult:
    sent: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.sent += other.sent
        self.failed += other.failed


def failure_reason(exc: BaseException) -> str:
    """Why publishing failed, in one of a few words: the `reason` label of the failure counter.

    unavailable: no connection, time-outs, throttling, 5xx; queue_not_found; no_credentials;
    rejected: SQS refused the request itself (access denied, a bad token); error: anything else.
    """
    if is_transient(exc) or isinstance(exc, EntriesFailed):
        return "unavailable"
    if isinstance(exc, QueueNotFound) or (
        isinstance(exc, ClientError) and error_code(exc) in NOT_FOUND_CODES
    ):
        return "queue_not_found"
    if isinstance(exc, CREDENTIAL_ERRORS):
        return "no_credentials"
    if isinstance(exc, ClientError):
        return "rejected"
    return "error"


class Publisher:
    """Sends due outbox records whenever woken, until none is left, then waits to be woken.

    While SQS fails, it waits through `settings.retry_delays` (the last one repeats) and reads
    the records again from the outbox, so memory stays bounded however long the outage; it never
    gives up, whatever the failure. A record SQS refuses outright (an invalid body) is logged and
    deferred in the outbox, with a wait that doubles from `refused_retry_seconds` up to
    `refused_retry_max_seconds`; the publisher wakes by itself when the earliest deferred one is
    due. `up` tells whether the last attempt to reach SQS succeeded; the observer hears of each
    failed attempt and each refused record.

    `async with publisher.running(flush_seconds):` is the whole of its life; the parts, for
    tests: `async with publisher:` holds its client, inside which `run()` publishes until
    cancelled and `flush()` hurries it before a stop.
    """

    def __init__(
        self,
        outbox: Outbox,
        settings: QueueSettings,
        *,
        observer: Observer = IGNORED,
        read_limit: int = READ_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.retry_delays:
            raise ValueError("Publisher needs at least one retry delay.")
        if not 0 < settings.refused_retry_seconds <= settings.refused_retry_max_seconds:
            raise ValueError("Publisher's refused retry waits must be positive, the first shorter.")
        self._outbox = outbox
        self._settings = settings
        self._observer = observer
        self._read_limit = read_limit
        self._clock = clock
        self._closing = contextlib.AsyncExitStack()
        self._client: SqsClient | None = None
        #: Found by `run()`, with back-off while that fails.
        self._queue_url = ""
        self._woken = asyncio.Event()
        #: Set while nothing due is left to send; a flush waits for it.
        self._idle = asyncio.Event()
        #: Set by a flush: back-off waits are cut short, there is little time left.
        self._hurried = asyncio.Event()
        self.up = False

    async def __aenter__(self) -> Publisher:
        """Open the SQS client; settings it cannot be made with (a bad endpoint) fail here."""
        self._client = await self._closing.enter_async_context(sqs_client(self._settings))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._client = None
        await self._closing.aclose()

    @contextlib.asynccontextmanager
    async def running(self, flush_seconds: float) -> AsyncIterator[None]:
        """Publish from a task of its own while inside; at the exit, send what is due if SQS
        takes it within `flush_seconds` (the rest waits for the next start), then stop.
        """
        async with self:
            task = asyncio.create_task(self.run(), name="publisher")
            task.add_done_callback(_ended)
            try:
                yield
                await self.flush(flush_seconds)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def wake(self) -> None:
        """Call right after committing an outcome record."""
        self._idle.clear()
        self._woken.set()

    async def run(self) -> None:
        """Publish until cancelled, starting with whatever was left unsent before a restart."""
        if self._client is None:
            raise RuntimeError("Publisher.run() needs its client: use `async with publisher`.")
        client = self._client
        self._queue_url = await self._retrying(lambda: resolve_queue_url(client, self._settings))
        log.info("publishing outcomes to %s", self._queue_url)
        self._woken.set()
        while True:
            await self._wait_for_work()
            # Cleared before draining, so a wake during a drain is not lost: it drains again.
            self._woken.clear()
            self._idle.clear()
            while await self._retrying(self._publish_some):
                pass

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait, at most `timeout` seconds, until nothing due is left; True if that happened.

        For a stop: `run()` keeps going meanwhile, its back-off cut short; cancel it afterwards.
        Whatever is left stays in the outbox for the next start.
        """
        self._hurried.set()
        try:
            async with asyncio.timeout(timeout):
                if not self._idle.is_set() and not await self._nothing_due():
                    await self._idle.wait()
        except TimeoutError:
            log.warning("stopping with outcomes not yet published; they go out after a restart")
            return False
        finally:
            self._hurried.clear()
        return True

    async def _nothing_due(self) -> bool:
        try:
            due = await self._outbox.next_due()
        except Exception:
            return False  # it cannot tell: something may be due, so the flush waits and sees
        return due is None or due > self._clock()

    async def _next_due(self) -> float | None:
        try:
            return await self._outbox.next_due()
        except Exception as exc:
            # The outbox failing must not end the publisher: look again after a while.
            log.warning("cannot read the outbox (%r); looking again in %gs", exc, self._longest)
            return self._clock() + self._longest

    @property
    def _longest(self) -> float:
        return self._settings.retry_delays[-1]

    async def _wait_for_work(self) -> None:
        """Until woken, or until the earliest deferred record is due."""
        if self._woken.is_set():
            return
        due = await self._next_due()
        now = self._clock()
        timeout = None if due is None else max(0.0, due - now) + TIMER_MARGIN
        if not self._woken.is_set() and (due is None or due > now):
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)

    async def _retrying(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """`attempt()`'s result, trying again after each failure, with back-off, for ever."""
        waits = delays(self._settings.retry_delays)
        failures = 0
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                self.up = False
                delay = next(waits)
                self._log_failure(exc, delay, first=failures == 0)
                self._observer.publish_failed(failure_reason(exc))
                failures += 1
                await self._pause(delay)
                continue
            self.up = True
            if failures:
                log.info("SQS accepts outcomes again, after %d failed attempt(s)", failures)
            return result

    async def _pause(self, delay: float) -> None:
        """Wait out a back-off; a flush cuts it short, and keeps the next ones short."""
        if self._hurried.is_set():
            await asyncio.sleep(min(delay, FLUSH_RETRY_SECONDS))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurried.wait(), delay)

    async def _publish_some(self) -> bool:
        """Send one read of the outbox; True when the read was full, so more may be waiting.

        Records committed after the read are not missed: each commit wakes the publisher again.
        """
        records = await self._outbox.due(self._read_limit, self._clock())
        if not records:
            return False
        batches = [records[i : i + BATCH_SIZE] for i in range(0, len(records), BATCH_SIZE)]
        results = await asyncio.gather(*map(self._send, batches), return_exceptions=True)
        total = BatchResult()
        for result in results:
            if isinstance(result, BatchResult):
                total.add(result)
        if total.sent:
            await self._outbox.mark_sent(total.sent)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if total.failed:
            raise EntriesFailed(f"SQS failed {len(total.failed)} outcome(s): {total.failed[0]}")
        return len(records) >= self._read_limit

    async def _send(self, batch: list[OutboxRecord]) -> BatchResult:
        assert self._client is not None and self._queue_url, "run() finds the queue first"
        try:
            response = await self._client.send_message_batch(
                QueueUrl=self._queue_url, Entries=[self._entry(r) for r in batch]
            )
        except ClientError as exc:
            if error_code(exc) not in REFUSED_CODES:
                raise
            # AWS refuses a whole batch for one bad entry; alone, each shows whether it is bad.
            if len(batch) > 1:
                return await self._send_one_by_one(batch)
            await self._refuse(batch[0], error_code(exc), str(exc))
            return BatchResult()
        by_id = {str(r.seq): r for r in batch}
        result = BatchResult(sent=[by_id[e["Id"]].seq for e in response.get("Successful", [])])
        for failure in response.get("Failed", []):
            record, code = by_id[failure["Id"]], failure.get("Code", "")
            # LocalStack reports invalid bodies as SQS's fault, hence the codes as well.
            if failure.get("SenderFault") or code in REFUSED_CODES:
                await self._refuse(record, code, failure.get("Message", ""))
            else:
                result.failed.append(f"{code}: {failure.get('Message', '')}")
        return result

    async def _send_one_by_one(self, batch: list[OutboxRecord]) -> BatchResult:
        total = BatchResult()
        for record in batch:
            total.add(await self._send([record]))
        return total

    def _entry(self, record: OutboxRecord) -> dict[str, Any]:
        attributes = {"status": {"DataType": "String", "StringValue": record.status}}
        if self._settings.signing_key:
            signature = sign(self._settings.signing_key, record.body)
            attributes[SIGNATURE_ATTRIBUTE] = {"DataType": "String", "StringValue": signature}
        entry: dict[str, Any] = {
            "Id": str(record.seq),
            "MessageBody": record.body,
            "MessageAttributes": attributes,
        }
        if self._settings.fifo:
            # One group per verification: no head-of-line blocking between unrelated outcomes,
            # and SQS drops a resend within its five-minute deduplication window.
            entry["MessageGroupId"] = record.verification_id
            entry["MessageDeduplicationId"] = record.verification_id
        return entry

    async def _refuse(self, record: OutboxRecord, code: str, message: str) -> None:
        settings = self._settings
        first, longest = settings.refused_retry_seconds, settings.refused_retry_max_seconds
        # The exponent is capped before it can overflow a float; the wait is capped anyway.
        delay = min(first * 2 ** min(record.attempts, 32), longest)
        await self._outbox.defer(record.seq, self._clock() + delay, f"{code}: {message}")
        self._observer.outcome_refused()
        log.error(
            "SQS refused the outcome of verification %s (outbox seq %d, refusal %d): %s %s; "
            "it stays unsent in the outbox and is tried again in %gs",
            record.verification_id,
            record.seq,
            record.attempts + 1,
            code,
            message,
            delay,
        )

    def _log_failure(self, exc: Exception, delay: float, *, first: bool) -> None:
        if is_transient(exc) or isinstance(exc, EntriesFailed):
            log.warning("SQS unavailable, outcomes wait; retrying in %gs: %s", delay, exc)
        elif isinstance(exc, ClientError | QueueNotFound | boto.BotoCoreError):
            log.error("SQS rejects publishing, outcomes wait; retrying in %gs: %s", delay, exc)
        else:
            # Neither SQS nor the network: a bug or the outbox; one trace per run of failures.
            log.error("Publishing failed; retrying in %gs: %r", delay, exc, exc_info=first)


def _ended(task: asyncio.Task[None]) -> None:
    # It retries every failure for ever, so this is a bug; never let it pass in silence.
    if not task.cancelled() and task.exception() is not None:
        log.error("the publisher stopped: outcomes stay in the outbox", exc_info=task.exception())
