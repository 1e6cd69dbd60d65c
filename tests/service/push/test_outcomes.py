"""Push, not poll: every outcome reaches the real (LocalStack) queue once, whatever SQS does."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from notifier.consumer import BadSignature, Outcome
from notifier.settings import QueueSettings
from tests.support.api import API_KEY, AUTH, MakeClient, MakeSettings, start, submit, wrong
from tests.support.database import database
from tests.support.localstack import TcpProxy, fresh_queue, queue_section, receive_all
from tests.support.process import ServiceProcess, free_port, request
from tests.support.twilio import TwilioServer


async def finish_one_of_each(client: Any, twilio: TwilioServer) -> dict[str, str]:
    """Start five verifications and drive each to a different final status; id -> status."""
    phones = {
        "approved": "+14155550101",
        "max_attempts_reached": "+14155550102",
        "canceled": "+14155550103",
        "expired": "+14155550104",
        "failed": "+15005550001",  # Twilio refuses it: invalid number
    }
    ids = {status: (await start(client, phone))["id"] for status, phone in phones.items()}
    for status in ("approved", "max_attempts_reached", "canceled", "expired"):
        await twilio.wait_for_message(phones[status])
    await submit(client, ids["approved"], twilio.code_for(phones["approved"]))
    for _ in range(3):
        await submit(
            client,
            ids["max_attempts_reached"],
            wrong(twilio.code_for(phones["max_attempts_reached"])),
        )
    await client.delete(f"/verifications/{ids['canceled']}", headers=AUTH)
    return {v: k for k, v in ids.items()}


def check_outcomes(messages: list[dict[str, Any]], expected: dict[str, str]) -> None:
    bodies = [json.loads(m["Body"]) for m in messages]
    assert Counter(b["id"] for b in bodies) == Counter(set(expected)), "each outcome exactly once"
    for message, body in zip(messages, bodies, strict=True):
        assert body["event"] == "verification.completed"
        assert body["status"] == expected[body["id"]]
        assert message["MessageAttributes"]["status"]["StringValue"] == body["status"]
        assert set(body) == {
            "event",
            "id",
            "status",
            "to",
            "reference",
            "attempts",
            "created_at",
            "completed_at",
            "reason",
        }
    failed = next(b for b in bodies if b["status"] == "failed")
    assert "21211" in failed["reason"]


@pytest.fixture(params=["standard", "fifo"])
async def any_queue(
    request: pytest.FixtureRequest, sqs_client: Any, localstack_endpoint: str
) -> AsyncIterator[QueueSettings]:
    fifo = request.param == "fifo"
    async with fresh_queue(sqs_client, localstack_endpoint, request.node.name, fifo=fifo) as queue:
        yield queue


async def test_every_final_status_arrives_once(
    any_queue: QueueSettings, sqs_client: Any, make_client: MakeClient, twilio: TwilioServer
) -> None:
    queue = any_queue
    client = await make_client(queue=queue_section(queue), verification={"ttl_seconds": 1.0})

    expected = await finish_one_of_each(client, twilio)
    messages = await receive_all(sqs_client, queue.url, count=5, seconds=10)

    check_outcomes(messages, expected)
    if queue.fifo:
        for m in messages:
            body = json.loads(m["Body"])
            assert m["Attributes"]["MessageGroupId"] == body["id"]
            assert m["Attributes"]["MessageDeduplicationId"] == body["id"]
    assert await receive_all(sqs_client, queue.url, count=1, seconds=1.5) == []


async def test_with_a_signing_key_outcomes_are_signed_and_the_consumer_checks_them(
    queue_settings: QueueSettings, sqs_client: Any, make_client: MakeClient, twilio: TwilioServer
) -> None:
    key = "0123456789abcdef-outcome-signing"
    section = {**queue_section(queue_settings), "signing_key": key}
    client = await make_client(queue=section)
    view = await start(client)
    await twilio.wait_for_message("+14155550100")
    await client.delete(f"/verifications/{view['id']}", headers=AUTH)

    [message] = await receive_all(sqs_client, queue_settings.url, 1)
    digest = hmac.new(key.encode(), message["Body"].encode(), hashlib.sha256).hexdigest()
    assert message["MessageAttributes"]["signature"]["StringValue"] == f"v1={digest}"
    assert Outcome.from_message(message, key).id == view["id"]
    with pytest.raises(BadSignature):
        Outcome.from_message(message, "another-key")


async def test_outcomes_wait_while_sqs_is_down_then_all_go_out(
    sqs_client: Any,
    queue_settings: QueueSettings,
    sqs_proxy: TcpProxy,
    make_settings: MakeSettings,
    make_client: MakeClient,
    twilio: TwilioServer,
) -> None:
    settings = make_settings(
        queue=queue_section(queue_settings, endpoint=sqs_proxy.url),
        verification={"ttl_seconds": 1.0},
    )
    client = await make_client(settings)
    # Let the publisher find its queue, then take SQS away.
    await asyncio.sleep(0.3)
    await sqs_proxy.cut()

    expected = await finish_one_of_each(client, twilio)
    await asyncio.sleep(1.5)  # the expired one expires, the publisher fails a few times
    with database(settings.database.path) as db:
        unsent = db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
    assert unsent == 5
    r = await client.get("/healthz")
    assert r.status == 200  # the service keeps working meanwhile

    await sqs_proxy.restore()
    messages = await receive_all(sqs_client, queue_settings.url, count=5, seconds=15)

    check_outcomes(messages, expected)


@pytest.fixture
async def service_env(tmp_path: Path, twilio: TwilioServer) -> dict[str, str]:
    return {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        **twilio.sender_env,
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_RETRY_DELAYS": "0.05,0.1,0.2",
    }


@pytest.fixture
async def processes() -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.returncode is None:
            await process.kill()


async def test_unsent_outcomes_survive_sigkill(
    tmp_path: Path,
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    sqs_client: Any,
    queue_settings: QueueSettings,
    twilio: TwilioServer,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    down = ServiceProcess(
        {**service_env, "VERIFY_QUEUE_URL": queue_settings.url, "VERIFY_QUEUE_ENDPOINT_URL": dead},
        tmp_path / "service.log",
    )
    processes.append(down)
    await down.start()
    ids = []
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for i in range(3):
            phone = f"+1415555{i:04d}"
            status, view = await request(
                http, "POST", f"{down.url}/verifications", json={"phone": phone}
            )
            assert status == 202, view
            await twilio.wait_for_message(phone)
            status, view = await request(
                http,
                "POST",
                f"{down.url}/verifications/{view['id']}/code",
                json={"code": twilio.code_for(phone)},
            )
            assert view["status"] == "approved"
            ids.append(view["id"])
    await down.kill()

    up = ServiceProcess(
        {
            **service_env,
            "VERIFY_QUEUE_URL": queue_settings.url,
            "VERIFY_QUEUE_ENDPOINT_URL": queue_settings.endpoint_url,
        },
        tmp_path / "service.log",
    )
    processes.append(up)
    await up.start()
    messages = await receive_all(sqs_client, queue_settings.url, count=3, seconds=15)

    assert sorted(json.loads(m["Body"])["id"] for m in messages) == sorted(ids), up.logs()
    assert all(json.loads(m["Body"])["status"] == "approved" for m in messages)
