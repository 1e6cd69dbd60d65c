"""The queue side of the driver: long-polls the outcome queue, noting when each outcome arrived.

Several receivers poll at once, as a consumer fleet would. Deletes are off the receive path and
gathered into batches of ten (or whatever came within `DELETE_LINGER` seconds): at light load a
receive brings one message, and a delete per message would double what LocalStack, which shares
the two cores with the service, spends per verification. Every receipt is kept, so an outcome that
came twice is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.stack import log
from notifier.queues import SqsClient

WAIT_SECONDS = 20
#: Far longer than any delete takes: a message is never received twice because of the driver.
VISIBILITY_SECONDS = 300
#: SQS deletes at most ten messages per request.
DELETE_BATCH = 10
DELETE_LINGER = 0.1


@dataclass(frozen=True)
class Arrival:
    #: perf_counter and time.time() when the receive that brought it returned.
    perf: float
    wall: float
    event: dict[str, Any]


class OutcomeListener:
    def __init__(self, sqs: SqsClient, queue_url: str, receivers: int = 4) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.receivers = receivers
        self.first: dict[str, Arrival] = {}
        self.receipts: Counter[str] = Counter()
        self.receive_requests = 0
        self.delete_requests = 0
        self._waiters: dict[str, asyncio.Future[Arrival]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._deletes: set[asyncio.Task[None]] = set()
        self._unacked: list[str] = []
        self._flush: asyncio.TimerHandle | None = None
        self.errors = 0

    @property
    def requests(self) -> int:
        return self.receive_requests + self.delete_requests

    async def __aenter__(self) -> OutcomeListener:
        self._tasks = [asyncio.create_task(self._receive()) for _ in range(self.receivers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._delete_unacked()
        if self._deletes:
            await asyncio.wait(self._deletes, timeout=10)

    async def wait(self, verification_id: str, timeout: float) -> Arrival:  # noqa: ASYNC109
        """The first arrival of this verification's outcome; TimeoutError if none in time."""
        if verification_id in self.first:
            return self.first[verification_id]
        future = self._waiters.setdefault(
            verification_id, asyncio.get_running_loop().create_future()
        )
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def settle(self, ids: set[str], quiet_seconds: float, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every id arrived, then `quiet_seconds` more to catch late duplicates."""
        missing = ids - self.first.keys()
        if missing:
            # Each wait ends by its own timeout; the ones that never came are counted as lost.
            await asyncio.gather(*(self.wait(i, timeout) for i in missing), return_exceptions=True)
        await asyncio.sleep(quiet_seconds)

    def lost_and_duplicated(self, ids: set[str]) -> tuple[int, int]:
        lost = len(ids - self.first.keys())
        duplicated = sum(1 for i in ids if self.receipts[i] > 1)
        return lost, duplicated

    async def _receive(self) -> None:
        while True:
            try:
                self.receive_requests += 1
                response = await self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=WAIT_SECONDS,
                    VisibilityTimeout=VISIBILITY_SECONDS,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log(f"receive failed: {exc!r}")
                await asyncio.sleep(0.5)
                continue
            perf, wall = time.perf_counter(), time.time()
            messages = response.get("Messages", [])
            for message in messages:
                self._arrived(json.loads(message["Body"]), perf, wall)
            for message in messages:
                self._unacked.append(message["ReceiptHandle"])
            if len(self._unacked) >= DELETE_BATCH:
                self._delete_unacked()
            elif self._unacked and self._flush is None:
                self._flush = asyncio.get_running_loop().call_later(
                    DELETE_LINGER, self._delete_unacked
                )

    def _delete_unacked(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        while self._unacked:
            handles, self._unacked = self._unacked[:DELETE_BATCH], self._unacked[DELETE_BATCH:]
            task = asyncio.create_task(self._delete(handles))
            self._deletes.add(task)
            task.add_done_callback(self._deletes.discard)

    def _arrived(self, event: dict[str, Any], perf: float, wall: float) -> None:
        verification_id = event["id"]
        self.receipts[verification_id] += 1
        if verification_id in self.first:
            return
        arrival = self.first[verification_id] = Arrival(perf, wall, event)
        future = self._waiters.pop(verification_id, None)
        if future is not None and not future.done():
            future.set_result(arrival)

    async def _delete(self, handles: list[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        self.delete_requests += 1
        with contextlib.suppress(Exception):
            await self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
