import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from notifier import queues
from notifier.messages import OutboxRecord, outcome_body
from notifier.publisher import Publisher
from notifier.queues import SqsClient
from notifier.settings import QueueSettings
from tests.localstack import TcpProxy, queue_depth, receive_all

FAST = (0.05, 0.1, 0.2)


class MemoryOutbox:
    """The store's outbox in memory; it counts its reads, to show the publisher does not poll."""

    def __init__(self) -> None:
        self.records: dict[int, OutboxRecord] = {}
        self.sent: list[int] = []
        self.reads = 0

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

    async def unsent(self, limit: int) -> list[OutboxRecord]:
        self.reads += 1
        return [self.records[seq] for seq in self.unsent_seqs[:limit]]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        assert not set(seqs) & set(self.sent), "a record was marked sent twice"
        self.sent += seqs


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def publisher(
    outbox: MemoryOutbox, client: SqsClient, settings: QueueSettings, **options: int
) -> Publisher:
    return Publisher(outbox, client, settings.url, fifo=settings.fifo, retry_delays=FAST, **options)


async def test_records_left_from_before_are_published_once_each_with_their_status(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    outbox = MemoryOutbox()
    for i in range(25):
        outbox.add(f"ver_{i}", status="verified" if i % 2 else "expired")

    async with running(publisher(outbox, sqs_client, queue_settings)):
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
    pub = publisher(outbox, sqs_client, queue_settings)
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

    async with running(publisher(outbox, sqs_client, fifo_queue_settings)):
        await eventually(lambda: not outbox.unsent_seqs)

    messages = await receive_all(sqs_client, fifo_queue_settings.url, 2)
    assert await queue_depth(sqs_client, fifo_queue_settings.url) == 0
    assert sorted(json.loads(m["Body"])["id"] for m in messages) == ["ver_a", "ver_b"]
    for message in messages:
        verification_id = json.loads(message["Body"])["id"]
        assert message["Attributes"]["MessageGroupId"] == verification_id
        assert message["Attributes"]["MessageDeduplicationId"] == verification_id


async def test_refused_records_stay_unsent_without_blocking_the_rest(
    sqs_client: SqsClient, queue_settings: QueueSettings, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = MemoryOutbox()
    for i in range(3):
        outbox.add(f"ver_bad_{i}", body="invalid \x00 body")
    for i in range(12):
        outbox.add(f"ver_good_{i}")
    # A read limit below the number of refused records: they must not stop progress.
    pub = publisher(outbox, sqs_client, queue_settings, read_limit=2)

    async with running(pub) as task:
        await eventually(lambda: len(outbox.sent) == 12)
        idle_reads = outbox.reads
        await asyncio.sleep(0.3)
        assert outbox.reads == idle_reads, "refused records keep the publisher busy"
        outbox.add("ver_after")
        pub.wake()
        await eventually(lambda: len(outbox.sent) == 13)
        assert not task.done()

    assert outbox.unsent_seqs == [1, 2, 3]
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 3
    for i, refusal in enumerate(sorted(refusals)):
        assert f"verification ver_bad_{i} (outbox seq {i + 1})" in refusal
    assert len(await receive_all(sqs_client, queue_settings.url, 13)) == 13


async def test_records_wait_out_an_outage_and_go_when_sqs_is_back(
    queue_settings: QueueSettings,
    sqs_client: SqsClient,
    sqs_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "notifier")
    outbox = MemoryOutbox()
    outbox.add("ver_before")
    via_proxy = dataclasses.replace(queue_settings, endpoint_url=sqs_proxy.url)

    async with queues.sqs_client(via_proxy) as client:
        pub = publisher(outbox, client, queue_settings)
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

    async with running(publisher(outbox, sqs_client, missing)) as task:
        await eventually(lambda: outbox.reads >= 3)
        assert not task.done()

    assert outbox.sent == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert all("queue does not exist" in e for e in errors)
