"""The publisher: drains the service's outbox of outcomes to SQS, at least once.

The service commits an outcome and its outbox record in one transaction, then calls `wake()`.
A record is marked sent only after SQS has accepted it, so a crash or an outage at any point
means it is sent again later; consumers dedupe by verification id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore import exceptions as boto  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from notifier.messages import SIGNATURE_ATTRIBUTE, OutboxRecord, sign
from notifier.queues import (
    NOT_FOUND_CODES,
    QueueNotFound,
    SqsClient,
    error_code,
    is_transient,
    sqs_client,
)

__all__ = ["Outbox", "Publisher", "failure_reason", "sqs_client"]

log = logging.getLogger(__name__)

#: SQS takes at most ten entries per SendMessageBatch.
BATCH_SIZE = 10
READ_LIMIT = 100
#: First and longest wait before a record SQS refused is offered again; it doubles in between.
REFUSED_DELAYS = (60.0, 3600.0)
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


class Outbox(Protocol):
    """The service's outbox; implemented by its store, so this module needs nothing of it."""

    async def due(self, limit: int, now: float) -> list[OutboxRecord]:
        """At most `limit` unsent records whose next attempt is at or before `now`, oldest first.

        Records deferred to later are not read, so a read costs the same however many there are.
        """
        ...

    async def mark_sent(self, seqs: Sequence[int]) -> None: ...

    async def defer(self, seq: int, until: float, error: str) -> None:
        """Record a refusal: one attempt more, its error, and no new attempt before `until`."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest unsent record is due (epoch seconds); None when all are sent."""
        ...


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

    While SQS fails, it waits through `retry_delays` (the last one repeats) and reads the
    records again from the outbox, so memory stays bounded however long the outage; it never
    gives up, whatever the failure. A record SQS refuses outright (an invalid body) is logged and
    deferred in the outbox, with a wait that doubles from `refused_delays[0]` up to
    `refused_delays[1]`; the publisher wakes by itself when the earliest deferred one is due.

    `up` tells whether the last attempt to reach SQS succeeded; `on_failure(reason)` and
    `on_refused()` are called for each failed attempt and each refused record.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: SqsClient,
        queue_url: str | Callable[[], Awaitable[str]],
        *,
        fifo: bool,
        retry_delays: Sequence[float],
        read_limit: int = READ_LIMIT,
        refused_delays: tuple[float, float] = REFUSED_DELAYS,
        signing_key: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retry_delays:
            raise ValueError("Publisher needs at least one retry delay.")
        if not 0 < refused_delays[0] <= refused_delays[1]:
            raise ValueError("Publisher's refused_delays must be positive, the first the shorter.")
        self._outbox = outbox
        self._client = client
        #: The URL, or how to find it: asked again with back-off while that fails.
        self._queue_url = queue_url
        self._fifo = fifo
        self._retry_delays = tuple(retry_delays)
        self._read_limit = read_limit
        self._refused_delays = refused_delays
        self._signing_key = signing_key
        self._clock = clock
        self._woken = asyncio.Event()
        #: Set while nothing due is left to send; a flush waits for it.
        self._idle = asyncio.Event()
        #: Set by a flush: back-off waits are cut short, there is little time left.
        self._hurried = asyncio.Event()
        self.up = False
        self.on_failure: Callable[[str], None] = lambda reason: None
        self.on_refused: Callable[[], None] = lambda: None

    def wake(self) -> None:
        """Call right after committing an outcome record."""
        self._idle.clear()
        self._woken.set()

    async def run(self) -> None:
        """Publish until cancelled, starting with whatever was left unsent before a restart."""
        if not isinstance(self._queue_url, str):
            self._queue_url = await self._retrying(self._queue_url)
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
        return self._retry_delays[-1]

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
        failures = 0
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                self.up = False
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                self._log_failure(exc, delay, first=failures == 0)
                self.on_failure(failure_reason(exc))
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
        assert isinstance(self._queue_url, str), "run() resolves the URL first"
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
        if self._signing_key:
            signature = sign(self._signing_key, record.body)
            attributes[SIGNATURE_ATTRIBUTE] = {"DataType": "String", "StringValue": signature}
        entry: dict[str, Any] = {
            "Id": str(record.seq),
            "MessageBody": record.body,
            "MessageAttributes": attributes,
        }
        if self._fifo:
            # One group per verification: no head-of-line blocking between unrelated outcomes,
            # and SQS drops a resend within its five-minute deduplication window.
            entry["MessageGroupId"] = record.verification_id
            entry["MessageDeduplicationId"] = record.verification_id
        return entry

    async def _refuse(self, record: OutboxRecord, code: str, message: str) -> None:
        first, longest = self._refused_delays
        # The exponent is capped before it can overflow a float; the wait is capped anyway.
        delay = min(first * 2 ** min(record.attempts, 32), longest)
        await self._outbox.defer(record.seq, self._clock() + delay, f"{code}: {message}")
        self.on_refused()
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
