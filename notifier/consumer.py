"""Reading outcomes from the queue: the library other services use to consume them.

Delivery is at least once: a message is deleted only after its handler succeeded, so a crash,
a failing handler or a lost delete brings it back. Dedupe by `Outcome.id`. A message that keeps
failing moves to the dead-letter queue after the queue's `maxReceiveCount` receives.

Two forms: `Consumer(client, url, handler).run()` handles a batch concurrently until `stop()`;
`async for outcome in outcomes(client, url)` handles one at a time. Given the service's
`signing_key`, both refuse a message whose signature is missing or wrong, as malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from notifier.events import BadSignature, MalformedMessage, Message, Outcome
from notifier.queues import NOT_FOUND_CODES, QueueNotFound, SqsClient, error_code, is_transient

# The consumer's API: what a handler receives, and what a message it never sees failed with.
__all__ = ["BadSignature", "Consumer", "Handler", "MalformedMessage", "Outcome", "outcomes"]

log = logging.getLogger(__name__)

Handler = Callable[[Outcome], Awaitable[None]]

RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0)


class Receiver:
    """Long-polls the queue, and keeps what it received invisible to others while it is handled."""

    def __init__(
        self,
        client: SqsClient,
        queue_url: str,
        *,
        wait_seconds: int,
        visibility_timeout: int,
        max_messages: int,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        if not 1 <= max_messages <= 10:
            raise ValueError("max_messages must be from 1 to 10, as SQS allows.")
        if visibility_timeout < 1:
            raise ValueError("visibility_timeout must be at least 1 second.")
        self.client = client
        self.queue_url = queue_url
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.max_messages = max_messages
        self.retry_delays = tuple(retry_delays)
        self._failures = 0

    async def receive(self) -> list[Message]:
        """One long poll; a transient failure is logged and waited out, and gives no messages."""
        try:
            response = await self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=self.max_messages,
                WaitTimeSeconds=self.wait_seconds,
                VisibilityTimeout=self.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                raise QueueNotFound(f"Queue '{self.queue_url}' does not exist.") from None
            if not is_transient(exc):
                raise
            await self._wait_out(exc)
            return []
        except Exception as exc:
            if not is_transient(exc):
                raise
            await self._wait_out(exc)
            return []
        self._failures = 0
        messages: list[Message] = response.get("Messages", [])
        return messages

    async def _wait_out(self, exc: Exception) -> None:
        delay = self.retry_delays[min(self._failures, len(self.retry_delays) - 1)]
        self._failures += 1
        log.warning("Cannot receive outcomes; retrying in %gs: %s", delay, exc)
        await asyncio.sleep(delay)

    async def delete(self, message: Message) -> None:
        try:
            await self.client.delete_message(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        except Exception as exc:
            # Handled but not deleted: it comes back, and the consumer's dedupe absorbs it.
            log.warning("Could not delete message %s: %s", message["MessageId"], exc)

    async def set_visibility(self, messages: Sequence[Message], seconds: int) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": seconds}
            for i, m in enumerate(messages)
        ]
        try:
            await self.client.change_message_visibility_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
        except Exception as exc:
            log.warning("Could not change the visibility of %d message(s): %s", len(entries), exc)

    @contextlib.asynccontextmanager
    async def lease(self, messages: list[Message]) -> AsyncIterator[set[str]]:
        """Extend the visibility of the messages whose ids are in the yielded set, until exit.

        Remove an id once its message is deleted or given up on.
        """
        pending = {m["MessageId"] for m in messages}
        task = asyncio.create_task(self._extend(messages, pending))
        try:
            yield pending
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _extend(self, messages: list[Message], pending: set[str]) -> None:
        # Halfway through the timeout leaves time for a slow or failed request.
        while True:
            await asyncio.sleep(self.visibility_timeout / 2)
            held = [m for m in messages if m["MessageId"] in pending]
            await self.set_visibility(held, self.visibility_timeout)


class Consumer:
    """Receives outcomes and calls `handler` on each, concurrently within a received batch.

    A message is deleted once its handler returns. If the handler raises, the message comes
    back after `retry_delay` seconds (None: after the visibility timeout), until the queue's
    redrive policy moves it to the dead-letter queue. While a handler runs longer than the
    visibility timeout, the timeout is extended, so no other consumer receives it meanwhile.
    With `signing_key`, a message not signed with it never reaches the handler.
    """

    def __init__(
        self,
        client: SqsClient,
        queue_url: str,
        handler: Handler,
        *,
        wait_seconds: int = 20,
        visibility_timeout: int = 30,
        max_messages: int = 10,
        retry_delay: int | None = None,
        signing_key: str = "",
    ) -> None:
        self._receiver = Receiver(
            client,
            queue_url,
            wait_seconds=wait_seconds,
            visibility_timeout=visibility_timeout,
            max_messages=max_messages,
        )
        self._handler = handler
        self._retry_delay = retry_delay
        self._signing_key = signing_key
        self._stopping = False
        self._polling: asyncio.Task[list[Message]] | None = None

    async def run(self) -> None:
        """Receive and handle until `stop()`; returns once the handlers in flight have finished."""
        while not self._stopping:
            self._polling = asyncio.create_task(self._receiver.receive())
            try:
                messages = await self._polling
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                # Stopped mid-poll: anything it had received comes back after its timeout.
                return
            finally:
                self._polling = None
            if messages:
                async with self._receiver.lease(messages) as pending:
                    await asyncio.gather(*(self._handle(m, pending) for m in messages))

    def stop(self) -> None:
        """Stop receiving; handlers in flight run to completion. Safe from a signal handler."""
        self._stopping = True
        if self._polling is not None:
            self._polling.cancel()

    async def _handle(self, message: Message, pending: set[str]) -> None:
        try:
            outcome = Outcome.from_message(message, self._signing_key)
        except MalformedMessage as exc:
            log.error("%s It is left to reach the dead-letter queue.", exc)
            pending.discard(message["MessageId"])
            return
        try:
            await self._handler(outcome)
        except Exception:
            log.exception(
                "Handling outcome %s failed (receive %d); it will come back",
                outcome.id,
                outcome.receive_count,
            )
            pending.discard(message["MessageId"])
            if self._retry_delay is not None:
                await self._receiver.set_visibility([message], self._retry_delay)
            return
        pending.discard(message["MessageId"])
        await self._receiver.delete(message)


async def outcomes(
    client: SqsClient,
    queue_url: str,
    *,
    wait_seconds: int = 20,
    visibility_timeout: int = 30,
    max_messages: int = 10,
    signing_key: str = "",
) -> AsyncGenerator[Outcome, None]:
    """Outcomes one at a time, each deleted when the loop body finishes with it without raising.

    The acknowledgement happens when the loop asks for the next outcome. If the body raises or
    breaks, the current outcome is not acknowledged and comes back after the visibility timeout,
    and the rest of its batch is released at once. Received outcomes stay invisible to other
    consumers while they wait their turn. Malformed messages are skipped (they reach the DLQ).
    With `signing_key`, messages not signed with it are skipped the same way.
    For prompt clean-up on break, iterate inside `contextlib.aclosing(outcomes(...))`.
    """
    receiver = Receiver(
        client,
        queue_url,
        wait_seconds=wait_seconds,
        visibility_timeout=visibility_timeout,
        max_messages=max_messages,
    )
    while True:
        messages = await receiver.receive()
        if not messages:
            continue
        async with receiver.lease(messages) as pending:
            current = None
            try:
                for message in messages:
                    try:
                        outcome = Outcome.from_message(message, signing_key)
                    except MalformedMessage as exc:
                        log.error("%s It is left to reach the dead-letter queue.", exc)
                        pending.discard(message["MessageId"])
                        continue
                    current = message["MessageId"]
                    yield outcome
                    current = None
                    pending.discard(message["MessageId"])
                    await receiver.delete(message)
            finally:
                # Left early: the current outcome failed, the ones after it were never tried.
                untried = [m for m in messages if m["MessageId"] in pending - {current}]
                await receiver.set_visibility(untried, 0)
