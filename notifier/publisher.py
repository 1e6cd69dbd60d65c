"""The publisher: drains the service's outbox of outcomes to SQS, at least once.

The service commits an outcome and its outbox record in one transaction, then calls `wake()`.
A record is marked sent only after SQS has accepted it, so a crash or an outage at any point
means it is sent again later; consumers dedupe by verification id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from notifier.messages import OutboxRecord
from notifier.queues import SqsClient, error_code, is_transient, sqs_client

__all__ = ["Outbox", "Publisher", "sqs_client"]

log = logging.getLogger(__name__)

#: SQS takes at most ten entries per SendMessageBatch.
BATCH_SIZE = 10
READ_LIMIT = 100

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


class Outbox(Protocol):
    """The service's outbox; implemented by its store, so this module needs nothing of it."""

    async def unsent(self, limit: int) -> list[OutboxRecord]:
        """At most `limit` records not yet marked sent, oldest first."""
        ...

    async def mark_sent(self, seqs: Sequence[int]) -> None: ...


class EntriesFailed(Exception):
    """SQS answered, but failed some entries for reasons of its own; they are worth retrying."""


@dataclass
class BatchResult:
    sent: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.sent += other.sent
        self.failed += other.failed


class Publisher:
    """Sends unsent outbox records whenever woken, until none is left, then waits to be woken.

    While SQS fails, it waits through `retry_delays` (the last one repeats) and reads the
    records again from the outbox, so memory stays bounded however long the outage. A record
    SQS refuses outright (an invalid body) is logged and skipped until the process restarts; it
    stays unsent in the outbox, for someone to look at, rather than being marked as sent.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: SqsClient,
        queue_url: str,
        *,
        fifo: bool,
        retry_delays: Sequence[float],
        read_limit: int = READ_LIMIT,
    ) -> None:
        if not retry_delays:
            raise ValueError("Publisher needs at least one retry delay.")
        self._outbox = outbox
        self._client = client
        self._queue_url = queue_url
        self._fifo = fifo
        self._retry_delays = tuple(retry_delays)
        self._read_limit = read_limit
        self._woken = asyncio.Event()
        self._refused: set[int] = set()

    def wake(self) -> None:
        """Call right after committing an outcome record."""
        self._woken.set()

    async def run(self) -> None:
        """Publish until cancelled, starting with whatever was left unsent before a restart."""
        self._woken.set()
        while True:
            await self._woken.wait()
            # Cleared before draining, so a wake during a drain is not lost: it drains again.
            self._woken.clear()
            await self._drain()

    async def _drain(self) -> None:
        failures = 0
        while True:
            try:
                more = await self._publish_some()
            except Exception as exc:
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                self._log_failure(exc, delay, first=failures == 0)
                failures += 1
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("SQS accepts outcomes again, after %d failed attempt(s)", failures)
                failures = 0
            if not more:
                return

    async def _publish_some(self) -> bool:
        """Send one read of the outbox; True when the read was full, so more may be waiting.

        Records committed after the read are not missed: each commit wakes the publisher again.
        """
        # Refused records are skipped, so read that many more to be sure of making progress.
        records = await self._outbox.unsent(self._read_limit + len(self._refused))
        records = [r for r in records if r.seq not in self._refused][: self._read_limit]
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
            self._refuse(batch[0], error_code(exc), str(exc))
            return BatchResult()
        by_id = {str(r.seq): r for r in batch}
        result = BatchResult(sent=[by_id[e["Id"]].seq for e in response.get("Successful", [])])
        for failure in response.get("Failed", []):
            record, code = by_id[failure["Id"]], failure.get("Code", "")
            # LocalStack reports invalid bodies as SQS's fault, hence the codes as well.
            if failure.get("SenderFault") or code in REFUSED_CODES:
                self._refuse(record, code, failure.get("Message", ""))
            else:
                result.failed.append(f"{code}: {failure.get('Message', '')}")
        return result

    async def _send_one_by_one(self, batch: list[OutboxRecord]) -> BatchResult:
        total = BatchResult()
        for record in batch:
            total.add(await self._send([record]))
        return total

    def _entry(self, record: OutboxRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Id": str(record.seq),
            "MessageBody": record.body,
            "MessageAttributes": {"status": {"DataType": "String", "StringValue": record.status}},
        }
        if self._fifo:
            # One group per verification: no head-of-line blocking between unrelated outcomes,
            # and SQS drops a resend within its five-minute deduplication window.
            entry["MessageGroupId"] = record.verification_id
            entry["MessageDeduplicationId"] = record.verification_id
        return entry

    def _refuse(self, record: OutboxRecord, code: str, message: str) -> None:
        self._refused.add(record.seq)
        log.error(
            "SQS refused the outcome of verification %s (outbox seq %d): %s %s; "
            "it stays unsent in the outbox and is skipped until restart",
            record.verification_id,
            record.seq,
            code,
            message,
        )

    def _log_failure(self, exc: Exception, delay: float, *, first: bool) -> None:
        if is_transient(exc) or isinstance(exc, EntriesFailed):
            log.warning("SQS unavailable, outcomes wait; retrying in %gs: %s", delay, exc)
        elif isinstance(exc, ClientError):
            log.error("SQS rejects publishing, outcomes wait; retrying in %gs: %s", delay, exc)
        else:
            # Neither SQS nor the network: a bug or the outbox; one trace per run of failures.
            log.error("Publishing failed; retrying in %gs: %r", delay, exc, exc_info=first)
