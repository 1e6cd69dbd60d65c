import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from notifier.events import outcome_body
from notifier.queues import SqsClient
from notifier.settings import QueueSettings
from service.observers import IGNORED
from service.push.sqs import Publisher
from service.store.base import OutboxRecord
from tests.support.localstack import TcpProxy, queue_depth, receive_all

FAST = (0.05, 0.1, 0.2)


class MemoryOutbox:
    """The store's outbox in memory; it counts its reads, to show the publisher does not poll."""

    def __init__(self) -> None:
        self.records: dict[int, OutboxRecord] = {}
        self.sent: list[int] = []
        self.reads = 0
        #: seq -> (next attempt at, last error), as the store's columns keep them.
        self.deferred: dict[int, tuple[float, str]] = {}
        self.limits: list[int] = []

    def add(self, verification_id: str, status: str = "verified", body: str | None = None) -> None:
        seq = len(self.records) + 1
        if body is None:
            body = outcome_body(
                id=verification_id,
                status=status,
                to="+14155550100",
                reference=None,
                attempts=1,
                created_at="2026-01-01T00:00:00Z",
                completed_at="2026-01-01T00:00:30Z",
                reason=None,
            )
        self.records[seq] = OutboxRecord(seq, verification_id, status, body)

    @property
    def unsent_seqs(self) -> list[int]:
        return [seq for seq in self.records if seq not in self.sent]

    def replace(self, seq: int, body: str) -> None:
        self.records[seq] = dataclasses.replace(self.records[seq], body=body)

    async def due(self, limit: int, now: float) -> list[OutboxRecord]:
        self.reads += 1
        self.limits.append(limit)
        due = [s for s in self.unsent_seqs if self.deferred.get(s, (0.0, ""))[0] <= now]
        return [self.records[seq] for seq in due[:limit]]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        assert not set(seqs) & set(self.sent), "a record was marked sent twice"
        self.sent += seqs

    async def defer(self, seq: int, until: float, error: str) -> None:
        record = self.records[seq]
        self.records[seq] = dataclasses.replace(record, attempts=record.attempts + 1)
        self.deferred[seq] = (until, error)

    async def next_due(self) -> float | None:
        times = [self.deferred.get(s, (0.0, ""))[0] for s in self.unsent_seqs]
        return min(times, default=None)


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    async with publisher:
        task = asyncio.create_task(publisher.run())
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Refusals:
    """An observer counting the records the queue refused."""

    def __init__(self) -> None:
        self.count = 0

    def outcome_refused(self) -> None:
        self.count += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(IGNORED, name)


def publisher(outbox: MemoryOutbox, settings: QueueSettings, **queue: Any) -> Publisher:
    return Publisher(outbox, dataclasses.replace(settings, retry_delays=FAST, **queue))


async def test_records_left_from_before_are_published_once_each_with_their_status(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    outbox = MemoryOutbox()
    for i in range(25):
        outbox.add(f"ver_{i}", status="verified" if i % 2 else "expired")

    async with running(publisher(outbox, queue_settings)):
        await eventually(lambda: not outbox.unsent_seqs)

    messages = await receive_all(sqs_client, queue_settings.url, 25)
    by_id = {json.loads(m["Body"])["id"]: m for m in messages}
    assert len(messages) == 25
    assert sorted(outbox.sent) == list(range(1, 26))
    for record in outbox.records.values():
        message = by_id[record.verification_id]
        assert message["Body"] == record.body
        assert message["MessageAttributes"]["status"]["StringValue"] == record.status


async def test_wake_publishes_what_was_committed_since(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    outbox = MemoryOutbox()
    pub = publisher(outbox, queue_settings)
    async with running(pub):
        await eventually(lambda: outbox.reads > 0)
        outbox.add("ver_late")
        pub.wake()
        await eventually(lambda: outbox.sent == [1])
        idle_reads = outbox.reads
        await asyncio.sleep(0.3)
        assert outbox.reads == idle_reads, "the publisher polls while idle"

    [message] = await receive_all(sqs_client, queue_settings.url, 1)
    assert json.loads(message["Body"])["id"] == "ver_late"


async def test_fifo_messages_are_grouped_and_deduplicated_by_verification_id(
    sqs_client: SqsClient, fifo_queue_settings: QueueSettings
) -> None:
    outbox = MemoryOutbox()
    outbox.add("ver_a")
    outbox.add("ver_b")
    outbox.add("ver_a")  # sent again, as after a crash between send and mark_sent

    async with running(publisher(outbox, fifo_queue_settings)):
        await eventually(lambda: not outbox.unsent_seqs)

    messages = await receive_all(sqs_client, fifo_queue_settings.url, 2)
    assert await queue_depth(sqs_client, fifo_queue_settings.url) == 0
    assert sorted(json.loads(m["Body"])["id"] for m in messages) == ["ver_a", "ver_b"]
    for message in messages:
        verification_id = json.loads(message["Body"])["id"]
        assert message["Attributes"]["MessageGroupId"] == verification_id
        assert message["Attributes"]["MessageDeduplicationId"] == verification_id


async def test_refused_records_are_deferred_with_back_off_and_retried_by_themselves(
    sqs_client: SqsClient, queue_settings: QueueSettings, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = MemoryOutbox()
    for i in range(3):
        outbox.add(f"ver_bad_{i}", body="invalid \x00 body")
    for i in range(12):
        outbox.add(f"ver_good_{i}")
    refusals = Refusals()
    settings = dataclasses.replace(
        queue_settings, retry_delays=FAST, refused_retry_seconds=0.4, refused_retry_max_seconds=0.8
    )
    # A read limit below the number of refused records: they must not stop progress.
    pub = Publisher(outbox, settings, observer=refusals, read_limit=2)
    began = time.time()

    async with running(pub) as task:
        await eventually(lambda: len(outbox.sent) == 12 and len(outbox.deferred) == 3)
        assert outbox.unsent_seqs == [1, 2, 3]
        for until, error in outbox.deferred.values():
            assert began + 0.4 <= until <= time.time() + 0.4
            assert error
        # Deferred, not due: nothing to read until the first of them is.
        reads = outbox.reads
        await asyncio.sleep(0.2)
        assert outbox.reads == reads, "deferred records keep the publisher busy"
        # Mended meanwhile (by hand, say): they go when due, with nobody waking the publisher.
        outbox.replace(2, outbox.records[4].body.replace("ver_good_0", "ver_bad_1"))
        outbox.replace(3, outbox.records[4].body.replace("ver_good_0", "ver_bad_2"))
        await eventually(lambda: outbox.unsent_seqs == [1], seconds=3)
        # The one still bad is refused again, each time after twice the wait, up to the longest.
        await eventually(lambda: outbox.records[1].attempts == 3, seconds=5)
        assert not task.done()

    assert max(outbox.limits) == 2, "reads grew with the refused records"
    assert refusals.count >= 5  # 3 at first, then record 1 twice more
    refused_logs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refused_logs) == refusals.count
    assert any("verification ver_bad_0 (outbox seq 1, refusal 3)" in m for m in refused_logs)
    assert any("tried again in 0.8s" in m for m in refused_logs)
    messages = await receive_all(sqs_client, queue_settings.url, 14)
    assert sorted(json.loads(m["Body"])["id"] for m in messages) == sorted(
        [*(f"ver_good_{i}" for i in range(12)), "ver_bad_1", "ver_bad_2"]
    )


async def test_records_wait_out_an_outage_and_go_when_sqs_is_back(
    queue_settings: QueueSettings,
    sqs_client: SqsClient,
    sqs_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "service.push")
    outbox = MemoryOutbox()
    outbox.add("ver_before")
    via_proxy = dataclasses.replace(queue_settings, endpoint_url=sqs_proxy.url)

    pub = publisher(outbox, via_proxy)
    async with running(pub) as task:
        # Published once through the proxy, so the outage also breaks a kept-alive connection.
        await eventually(lambda: outbox.sent == [1])
        await sqs_proxy.cut()
        for i in range(5):
            outbox.add(f"ver_during_{i}")
        pub.wake()
        await asyncio.sleep(0.8)
        assert outbox.sent == [1]
        assert not task.done()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        # Back-off: at 0.05, 0.1, 0.2, 0.2 ... seconds, about 5 attempts in 0.8 s, not hundreds.
        assert 2 <= len(warnings) <= 8
        assert all(r.exc_info is None for r in warnings), "a stack trace per failure"

        await sqs_proxy.restore()
        await eventually(lambda: not outbox.unsent_seqs, seconds=5)

    messages = await receive_all(sqs_client, queue_settings.url, 6)
    assert sorted(json.loads(m["Body"])["id"] for m in messages) == sorted(
        r.verification_id for r in outbox.records.values()
    )
    assert any("accepts outcomes again" in r.getMessage() for r in caplog.records)


async def test_a_missing_queue_keeps_records_unsent_and_the_publisher_alive(
    sqs_client: SqsClient, queue_settings: QueueSettings, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = MemoryOutbox()
    outbox.add("ver_1")
    missing = dataclasses.replace(queue_settings, url=queue_settings.url + "-missing")

    async with running(publisher(outbox, missing)) as task:
        await eventually(lambda: outbox.reads >= 3)
        assert not task.done()

    assert outbox.sent == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert all("queue does not exist" in e for e in errors)


async def test_with_a_signing_key_each_message_carries_the_hmac_of_its_body(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    outbox = MemoryOutbox()
    outbox.add("ver_signed")
    pub = publisher(outbox, queue_settings, signing_key="publisher-test-key")

    async with running(pub):
        await eventually(lambda: outbox.sent == [1])

    [message] = await receive_all(sqs_client, queue_settings.url, 1)
    digest = hmac.new(b"publisher-test-key", message["Body"].encode(), hashlib.sha256)
    signature = message["MessageAttributes"]["signature"]
    assert signature == {"DataType": "String", "StringValue": f"v1={digest.hexdigest()}"}


async def test_flush_sends_what_is_due_at_once_and_gives_up_at_its_timeout(
    queue_settings: QueueSettings, sqs_client: SqsClient, sqs_proxy: TcpProxy
) -> None:
    outbox = MemoryOutbox()
    via_proxy = dataclasses.replace(queue_settings, endpoint_url=sqs_proxy.url)

    # A back-off far longer than any stop: a flush must not sit it out.
    pub = Publisher(outbox, dataclasses.replace(via_proxy, retry_delays=(30.0,)))
    async with running(pub):
        assert await pub.flush(1.0), "nothing to send is flushed at once"
        await sqs_proxy.cut()
        outbox.add("ver_1")
        pub.wake()
        began = time.monotonic()
        assert not await pub.flush(0.3)
        assert time.monotonic() - began < 0.6
        assert not pub.up

        await sqs_proxy.restore()
        began = time.monotonic()
        assert await pub.flush(5.0)
        assert time.monotonic() - began < 1.0
        assert outbox.sent == [1] and pub.up

    [message] = await receive_all(sqs_client, queue_settings.url, 1)
    assert json.loads(message["Body"])["id"] == "ver_1"


async def test_finds_the_queue_by_name_and_flushes_when_it_stops_running(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    outbox = MemoryOutbox()
    by_name = dataclasses.replace(queue_settings, url="", create=False, retry_delays=FAST)
    pub = Publisher(outbox, by_name)

    async with pub.running(flush_seconds=5.0):
        outbox.add("ver_last")
        pub.wake()

    assert outbox.sent == [1], "what was due at the stop was not flushed"
    [message] = await receive_all(sqs_client, queue_settings.url, 1)
    assert json.loads(message["Body"])["id"] == "ver_last"
