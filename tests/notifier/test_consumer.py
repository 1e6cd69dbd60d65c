import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from notifier.consumer import Consumer, Outcome, outcomes
from notifier.events import outcome_body, sign
from notifier.queues import SqsClient, dead_letter_name
from notifier.settings import QueueSettings
from tests.support.localstack import queue_depth, receive_all


def body(verification_id: str, status: str = "verified") -> str:
    return outcome_body(
        id=verification_id,
        status=status,
        to="+14155550100",
        reference="order-7",
        attempts=1,
        created_at="2026-01-01T00:00:00Z",
        completed_at="2026-01-01T00:00:30Z",
        reason=None,
    )


async def send(client: SqsClient, url: str, *bodies: str) -> None:
    for text in bodies:
        await client.send_message(QueueUrl=url, MessageBody=text)


@contextlib.asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


async def counts(client: SqsClient, url: str) -> tuple[int, int]:
    """Messages visible, and received but not yet visible again."""
    response = await client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = response["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def eventually(check: Callable[[], bool | Awaitable[bool]], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def depth(client: SqsClient, settings: QueueSettings, expected: int) -> bool:
    return await queue_depth(client, settings.url) == expected


async def dead_letters(client: SqsClient, settings: QueueSettings) -> str:
    response = await client.get_queue_url(QueueName=dead_letter_name(settings.name))
    return str(response["QueueUrl"])


async def test_handled_outcome_is_parsed_and_deleted(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, body("ver_1"))
    seen: list[Outcome] = []

    async def handle(outcome: Outcome) -> None:
        seen.append(outcome)
        consumer.stop()

    consumer = Consumer(sqs_client, queue_settings.url, handle, wait_seconds=1)
    await asyncio.wait_for(consumer.run(), 10)

    [outcome] = seen
    assert (outcome.id, outcome.status, outcome.reference) == ("ver_1", "verified", "order-7")
    assert outcome.raw == json.loads(body("ver_1"))
    assert outcome.receive_count == 1
    assert await queue_depth(sqs_client, queue_settings.url) == 0


async def test_failing_outcome_comes_back_then_moves_to_the_dead_letter_queue(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, body("ver_1"))
    receive_counts: list[int] = []

    async def fail(outcome: Outcome) -> None:
        receive_counts.append(outcome.receive_count)
        raise RuntimeError("downstream is down")

    consumer = Consumer(
        sqs_client, queue_settings.url, fail, wait_seconds=1, visibility_timeout=5, retry_delay=0
    )
    async with consuming(consumer):
        moved = await receive_all(sqs_client, await dead_letters(sqs_client, queue_settings), 1)

    assert [json.loads(m["Body"])["id"] for m in moved] == ["ver_1"]
    # The queue's redrive policy allows 2 receives (tests.support.localstack's queues).
    assert receive_counts == [1, 2]


async def test_slow_handler_keeps_its_outcome_from_other_consumers(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, body("ver_slow"))
    started, calls = asyncio.Event(), 0

    async def slow(outcome: Outcome) -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(2.2)  # well past the 1 s visibility timeout

    consumer = Consumer(sqs_client, queue_settings.url, slow, wait_seconds=1, visibility_timeout=1)
    async with consuming(consumer):
        await asyncio.wait_for(started.wait(), 10)
        stolen = await receive_all(sqs_client, queue_settings.url, 1, seconds=1.8, delete=False)
        assert stolen == []
        await eventually(lambda: depth(sqs_client, queue_settings, 0))

    assert calls == 1


async def test_a_batch_is_handled_concurrently(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, *(body(f"ver_{i}") for i in range(5)))
    running = peak = handled = 0

    async def handle(outcome: Outcome) -> None:
        nonlocal running, peak, handled
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.3)
        running -= 1
        handled += 1

    async with consuming(Consumer(sqs_client, queue_settings.url, handle, wait_seconds=1)):
        await eventually(lambda: handled == 5)

    assert peak > 1


async def test_stop_lets_the_handler_in_flight_finish(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, body("ver_1"))
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle(outcome: Outcome) -> None:
        started.set()
        await release.wait()
        finished.set()

    consumer = Consumer(sqs_client, queue_settings.url, handle, wait_seconds=1)
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(started.wait(), 10)
    consumer.stop()
    await asyncio.sleep(0.2)
    assert not task.done()
    release.set()
    await asyncio.wait_for(task, 5)

    assert finished.is_set()
    assert await queue_depth(sqs_client, queue_settings.url) == 0


async def test_stop_cuts_a_long_poll_short(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    async def never(outcome: Outcome) -> None:
        raise AssertionError("the queue is empty")

    consumer = Consumer(sqs_client, queue_settings.url, never, wait_seconds=20)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    consumer.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 1


async def test_malformed_message_skips_the_handler_and_reaches_the_dead_letter_queue(
    sqs_client: SqsClient, queue_settings: QueueSettings, caplog: pytest.LogCaptureFixture
) -> None:
    await send(sqs_client, queue_settings.url, "not json", json.dumps({"id": 1}))
    handled: list[Outcome] = []

    async def handle(outcome: Outcome) -> None:
        handled.append(outcome)

    consumer = Consumer(
        sqs_client, queue_settings.url, handle, wait_seconds=1, visibility_timeout=1
    )
    async with consuming(consumer):
        moved = await receive_all(sqs_client, await dead_letters(sqs_client, queue_settings), 2)

    assert sorted(m["Body"] for m in moved) == sorted(["not json", '{"id": 1}'])
    assert handled == []
    assert "is not JSON" in caplog.text
    assert "has no outcome id and status" in caplog.text


async def test_outcomes_are_acknowledged_when_the_loop_body_completes(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, *(body(f"ver_{i}") for i in range(3)))
    seen: list[str] = []

    with pytest.raises(RuntimeError, match="third"):
        stream = outcomes(sqs_client, queue_settings.url, wait_seconds=1, visibility_timeout=30)
        async with contextlib.aclosing(stream):
            async for outcome in stream:
                seen.append(outcome.id)
                if len(seen) == 3:
                    raise RuntimeError("the third one fails")

    # The two that completed are gone; the failed one is held until its visibility timeout.
    assert await counts(sqs_client, queue_settings.url) == (0, 1)


async def test_leaving_the_loop_releases_the_outcomes_not_yet_tried(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    await send(sqs_client, queue_settings.url, *(body(f"ver_{i}") for i in range(3)))

    stream = outcomes(sqs_client, queue_settings.url, wait_seconds=1, visibility_timeout=30)
    async with contextlib.aclosing(stream):
        async for outcome in stream:
            first = outcome
            break

    # Received in one batch: the untried ones are visible again at once; the first one is not.
    assert await counts(sqs_client, queue_settings.url) == (2, 1)
    released = await receive_all(sqs_client, queue_settings.url, 2)
    assert first.id not in {json.loads(m["Body"])["id"] for m in released}


async def send_signed(client: SqsClient, url: str, text: str, signature: str) -> None:
    attributes = {"signature": {"DataType": "String", "StringValue": signature}}
    await client.send_message(QueueUrl=url, MessageBody=text, MessageAttributes=attributes)


async def test_with_a_signing_key_only_signed_outcomes_reach_the_handler(
    sqs_client: SqsClient, queue_settings: QueueSettings, caplog: pytest.LogCaptureFixture
) -> None:
    key, url = "consumer-test-key", queue_settings.url
    signed = body("ver_signed")
    await send_signed(sqs_client, url, signed, sign(key, signed))
    await send(sqs_client, url, body("ver_unsigned"))
    await send_signed(sqs_client, url, body("ver_forged"), sign("another-key", body("ver_forged")))
    await send_signed(sqs_client, url, body("ver_altered"), sign(key, signed))
    started = json.dumps({**json.loads(body("ver_started")), "event": "verification.started"})
    await send_signed(sqs_client, url, started, sign(key, started))
    handled: list[str] = []

    async def handle(outcome: Outcome) -> None:
        handled.append(outcome.id)

    consumer = Consumer(
        sqs_client, url, handle, wait_seconds=1, visibility_timeout=1, signing_key=key
    )
    async with consuming(consumer):
        moved = await receive_all(sqs_client, await dead_letters(sqs_client, queue_settings), 4)

    assert handled == ["ver_signed"]
    assert sorted(json.loads(m["Body"])["id"] for m in moved) == [
        "ver_altered",
        "ver_forged",
        "ver_started",
        "ver_unsigned",
    ]
    assert "is not signed" in caplog.text
    assert caplog.text.count("has a wrong signature") >= 2
    assert "is not a verification.completed event: 'verification.started'" in caplog.text


async def test_the_outcome_stream_skips_unsigned_messages_too(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    key, url = "stream-test-key", queue_settings.url
    await send(sqs_client, url, body("ver_unsigned"))
    signed = body("ver_signed")
    await send_signed(sqs_client, url, signed, sign(key, signed))

    stream = outcomes(sqs_client, url, wait_seconds=1, visibility_timeout=30, signing_key=key)
    async with contextlib.aclosing(stream):
        outcome = await asyncio.wait_for(anext(stream), 10)

    assert outcome.id == "ver_signed"
