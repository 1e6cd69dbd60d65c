"""The publisher seen from outside: it never dies, says when it cannot publish (logs, /metrics,
/readyz), defers what SQS refuses, and sends what a stop decided before the process exits."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from notifier.queues import SqsClient, dead_letter_name, resolve_queue_url
from notifier.settings import QueueSettings
from tests.support.api import API_KEY, AUTH, MakeClient, MakeSettings, start
from tests.support.database import database
from tests.support.localstack import REGION, TcpProxy, queue_section, receive_all
from tests.support.metrics import scrape, value
from tests.support.process import ServiceProcess, free_port, request
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def readiness(client: Any) -> tuple[int, dict[str, Any]]:
    r = await client.get("/readyz")
    return r.status, await r.json()


async def failures(client: Any, reason: str) -> float:
    return value(await scrape(client), "outbox_publish_failures_total", reason=reason)


async def cancel_one(client: Any, twilio: TwilioServer, phone: str = PHONE) -> str:
    """Start a verification and cancel it: one outcome in the outbox; returns its id."""
    view = await start(client, phone)
    await twilio.wait_for_message(phone)
    r = await client.delete(f"/verifications/{view['id']}", headers=AUTH)
    assert r.status == 200, await r.text()
    return str(view["id"])


def outbox_rows(path: str) -> list[tuple[Any, ...]]:
    with database(path) as db:
        return db.execute(
            "SELECT verification_id, sent_at, attempts, next_attempt_at, last_error FROM outbox"
        ).fetchall()


async def test_a_publisher_without_credentials_says_so_and_keeps_trying(
    make_client: MakeClient,
    twilio: TwilioServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No credentials anywhere: not in the environment, the files, or an instance's metadata.
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # 0.0.0.0 is no loopback name to sqs_client, so it lends no LocalStack credentials either.
    endpoint = f"http://0.0.0.0:{free_port()}"
    client = await make_client(
        queue={"enabled": True, "endpoint_url": endpoint, "retry_delays": [0.05, 0.1]}
    )

    async def failed_a_few_times() -> bool:
        return await failures(client, "no_credentials") >= 3

    await eventually(failed_a_few_times)
    errors = [
        r for r in caplog.records if r.levelno == logging.ERROR and "credentials" in r.message
    ]
    assert errors, "the failure is not logged as an error"
    status, body = await readiness(client)
    assert (status, body) == (
        503,
        {"status": "not_ready", "checks": {"store": "ok", "sms": "ok", "publisher": "failing"}},
    )
    samples = await scrape(client)
    assert value(samples, "outbox_publisher_up") == 0
    # Still trying: the failures go on.
    count = value(samples, "outbox_publish_failures_total", reason="no_credentials")
    await asyncio.sleep(0.5)
    assert await failures(client, "no_credentials") > count
    # And the service works meanwhile; its outcomes wait in the outbox.
    await cancel_one(client, twilio)
    assert value(await scrape(client), "outbox_depth") == 1


async def test_a_queue_created_late_is_waited_for_then_used(
    make_client: MakeClient,
    twilio: TwilioServer,
    sqs_client: SqsClient,
    localstack_endpoint: str,
) -> None:
    name = f"late-{uuid.uuid4().hex[:8]}"
    queue = {"enabled": True, "name": name, "endpoint_url": localstack_endpoint}
    client = await make_client(queue={**queue, "region": REGION, "retry_delays": [0.05, 0.1]})
    verification_id = await cancel_one(client, twilio)

    async def not_found_twice() -> bool:
        return await failures(client, "queue_not_found") >= 2

    await eventually(not_found_twice)
    status, body = await readiness(client)
    assert (status, body["checks"]["publisher"]) == (503, "failing")

    url = await resolve_queue_url(
        sqs_client, QueueSettings(name=name, endpoint_url=localstack_endpoint, create=True)
    )
    try:
        [message] = await receive_all(sqs_client, url, 1, seconds=10)
        assert json.loads(message["Body"])["id"] == verification_id
        assert await readiness(client) == (200, {"status": "ready"})
        assert value(await scrape(client), "outbox_publisher_up") == 1
    finally:
        for queue_url in (url, url.replace(name, dead_letter_name(name))):
            await sqs_client.delete_queue(QueueUrl=queue_url)


async def test_a_refused_outcome_is_deferred_counted_and_sent_once_mended(
    make_settings: MakeSettings,
    make_client: MakeClient,
    twilio: TwilioServer,
    sqs_client: SqsClient,
    queue_settings: QueueSettings,
) -> None:
    path = make_settings().database.path
    offline = await make_client()
    verification_id = await cancel_one(offline, twilio)
    await offline.close()
    with database(path) as db:
        [(body,)] = db.execute("SELECT body FROM outbox").fetchall()
        # SQS takes no NUL character; our bodies are ASCII JSON, so only a hand can put one there.
        db.execute("UPDATE outbox SET body = ?", ("\x00" + body,))

    queue = {**queue_section(queue_settings), "refused_retry_seconds": 0.6}
    client = await make_client(queue={**queue, "refused_retry_max_seconds": 0.6})

    async def refused() -> bool:
        return value(await scrape(client), "outbox_outcomes_refused_total") >= 1

    await eventually(refused)
    [(_, sent_at, attempts, next_attempt_at, last_error)] = outbox_rows(path)
    assert sent_at is None and attempts >= 1 and last_error
    assert next_attempt_at > time.time() - 0.6
    assert value(await scrape(client), "outbox_depth") == 1
    assert await readiness(client) == (200, {"status": "ready"}), "one bad record is no outage"

    with database(path) as db:
        db.execute("UPDATE outbox SET body = ?", (body,))
    # Nobody wakes the publisher: it comes back for the record by itself when it is due.
    [message] = await receive_all(sqs_client, queue_settings.url, 1, seconds=10)
    assert json.loads(message["Body"])["id"] == verification_id

    async def marked_sent() -> bool:
        [(_, sent_at, _, _, _)] = outbox_rows(path)
        return sent_at is not None

    await eventually(marked_sent)


async def test_outcomes_still_unsent_at_a_stop_go_out_before_it_ends(
    make_settings: MakeSettings,
    make_client: MakeClient,
    twilio: TwilioServer,
    sqs_client: SqsClient,
    queue_settings: QueueSettings,
    sqs_proxy: TcpProxy,
) -> None:
    # A long back-off: SQS failed just before the stop and the publisher is waiting it out.
    queue = {**queue_section(queue_settings, endpoint=sqs_proxy.url), "retry_delays": [30.0]}
    settings = make_settings(queue=queue, server={"shutdown_grace_seconds": 2.0})
    client = await make_client(settings)
    await sqs_proxy.cut()
    verification_id = await cancel_one(client, twilio)
    await asyncio.sleep(0.5)  # it failed to publish it, and waits
    await sqs_proxy.restore()
    began = time.monotonic()
    await client.close()
    took = time.monotonic() - began

    [message] = await receive_all(sqs_client, queue_settings.url, 1, seconds=5)
    assert json.loads(message["Body"])["id"] == verification_id
    [(_, sent_at, _, _, _)] = outbox_rows(settings.database.path)
    assert sent_at is not None
    assert took < 2.0


async def test_a_stop_waits_for_sqs_at_most_its_budget(
    make_settings: MakeSettings,
    make_client: MakeClient,
    twilio: TwilioServer,
    sqs_client: SqsClient,
    queue_settings: QueueSettings,
    sqs_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = queue_section(queue_settings, endpoint=sqs_proxy.url)
    settings = make_settings(queue=queue, server={"shutdown_grace_seconds": 3.0})
    client = await make_client(settings)
    await sqs_proxy.cut()
    verification_id = await cancel_one(client, twilio)
    began = time.monotonic()
    await client.close()
    took = time.monotonic() - began

    # The flush has a budget of its own, a second, whatever the grace of the orchestrator.
    assert 0.9 < took < 2.0
    assert "not yet published" in caplog.text
    [(_, sent_at, _, _, _)] = outbox_rows(settings.database.path)
    assert sent_at is None
    # It goes at the next start.
    await sqs_proxy.restore()
    await make_client(settings)
    [message] = await receive_all(sqs_client, queue_settings.url, 1, seconds=10)
    assert json.loads(message["Body"])["id"] == verification_id


async def test_with_the_queue_off_readiness_is_the_store_s(client: Any) -> None:
    assert await readiness(client) == (200, {"status": "ready"})


@pytest.mark.slow
async def test_sigterm_publishes_what_waits_before_the_process_exits(
    tmp_path: Path,
    twilio: TwilioServer,
    sqs_client: SqsClient,
    queue_settings: QueueSettings,
    sqs_proxy: TcpProxy,
) -> None:
    service = ServiceProcess(
        {
            "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
            **twilio.sender_env,
            "VERIFY_AUTH_API_KEYS": API_KEY,
            "VERIFY_QUEUE_URL": queue_settings.url,
            "VERIFY_QUEUE_ENDPOINT_URL": sqs_proxy.url,
            # SQS failed just before the stop, and the publisher waits out a long back-off.
            "VERIFY_QUEUE_RETRY_DELAYS": "30",
            "VERIFY_SERVER_SHUTDOWN_GRACE_SECONDS": "1",
        },
        tmp_path / "service.log",
    )
    await service.start()
    try:
        await sqs_proxy.cut()
        async with aiohttp.ClientSession(headers=AUTH) as http:
            status, view = await request(
                http, "POST", f"{service.url}/verifications", json={"phone": PHONE}
            )
            assert status == 202, view
            await twilio.wait_for_message(PHONE)
            status, _ = await request(http, "DELETE", f"{service.url}/verifications/{view['id']}")
            assert status == 200
        await asyncio.sleep(0.5)  # it failed to publish it, and waits
        await sqs_proxy.restore()
        returncode = await service.stop()
    finally:
        if service.process is not None and service.process.returncode is None:
            await service.kill()

    assert returncode == 0, service.logs()
    [message] = await receive_all(sqs_client, queue_settings.url, 1, seconds=5)
    assert json.loads(message["Body"])["id"] == view["id"], service.logs()


async def test_an_expiry_decided_while_the_orchestrator_stops_is_published(
    make_settings: MakeSettings,
    make_client: MakeClient,
    twilio: TwilioServer,
    sqs_client: SqsClient,
    queue_settings: QueueSettings,
) -> None:
    settings = make_settings(
        queue=queue_section(queue_settings),
        verification={"ttl_seconds": 0.5},
        database={"busy_timeout_ms": 50, "write_retry_seconds": 0.2},
        server={"shutdown_grace_seconds": 3.0},
    )
    client = await make_client(settings)
    view = await start(client, PHONE)
    await twilio.wait_for_message(PHONE)
    # Another process holds the write lock past the deadline: the expiry is retried, not yet
    # committed, so the stop finds the verification busy and waits for it.
    locker = sqlite3.connect(settings.database.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        await asyncio.sleep(0.8)
        stopping = asyncio.create_task(client.close())
        await asyncio.sleep(0.3)
        assert not stopping.done()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await asyncio.wait_for(stopping, 5)

    [message] = await receive_all(sqs_client, queue_settings.url, 1, seconds=5)
    body = json.loads(message["Body"])
    assert (body["id"], body["status"]) == (view["id"], "expired")
