"""Webhooks seen from outside: receivers on loopback verify every delivery with `standardwebhooks`;
the service runs in-process over real HTTP, or as a process killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from notifier.settings import QueueSettings
from tests.service.push.test_outcomes import finish_one_of_each
from tests.support.api import API_KEY, AUTH, MakeClient, start
from tests.support.localstack import queue_section, receive_all
from tests.support.metrics import scrape, value
from tests.support.process import ServiceProcess, request
from tests.support.twilio import TwilioServer
from tests.support.webhooks import (
    OTHER_SECRET,
    SECRET,
    FakeReceiver,
    ReceiverProcess,
    endpoint,
    webhooks_section,
)

PHONE = "+14155550100"


async def cancel_one(client: Any, twilio: TwilioServer, phone: str = PHONE) -> str:
    view = await start(client, phone)
    await twilio.wait_for_message(phone)
    r = await client.delete(f"/verifications/{view['id']}", headers=AUTH)
    assert r.status == 200, await r.text()
    return str(view["id"])


@pytest.mark.slow
async def test_every_final_status_is_delivered_once_and_verified(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    receiver = ReceiverProcess()
    await receiver.start(tmp_path)
    try:
        client = await make_client(
            webhooks=webhooks_section(endpoint("backend", receiver.url)),
            verification={"ttl_seconds": 1.0},
        )
        expected = await finish_one_of_each(client, twilio)
        lines = await receiver.wait_for(5)
        await asyncio.sleep(1.0)  # and no second delivery of any
    finally:
        await receiver.stop()
    assert Counter(line["id"] for line in receiver.lines) == Counter(set(expected))
    for line in lines:
        assert line["event"] == "verification.completed"
        assert line["status"] == expected[line["id"]]
    samples = await scrape(client)
    assert value(samples, "webhook_delivered_total", endpoint="backend") == 5
    assert value(samples, "webhook_undelivered", endpoint="backend") == 0


async def test_a_receiver_failing_for_a_while_gets_it_after_back_off_with_the_same_id(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    async with FakeReceiver(lambda n: 500 if n < 3 else 204) as receiver:
        client = await make_client(webhooks=webhooks_section(endpoint("backend", receiver.url)))
        verification_id = await cancel_one(client, twilio)
        hits = await receiver.wait_for(4)
        await asyncio.sleep(0.5)
    assert len(receiver.hits) == 4, "delivered once it answered 2xx, then no more"
    assert {h.headers["webhook-id"] for h in hits} == {f"msg_{verification_id}"}
    assert [h.outcome["id"] for h in hits if h.outcome] == [verification_id] * 4
    assert len({h.body for h in hits}) == 1, "the same body on every attempt"
    gaps = [b.at - a.at for a, b in pairwise(hits)]
    assert all(gap >= 0.02 for gap in gaps), gaps  # waited, with back-off (0.05 s, halved)
    envelope = json.loads(hits[0].body)
    assert envelope["type"] == "verification.completed"
    assert envelope["data"]["status"] == "canceled"
    samples = await scrape(client)
    assert value(samples, "webhook_delivered_total", endpoint="backend") == 1
    failed = value(
        samples, "webhook_failed_attempts_total", endpoint="backend", reason="status_5xx"
    )
    assert failed == 3


async def test_410_disables_the_endpoint_and_says_so(
    make_client: MakeClient, twilio: TwilioServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeReceiver(lambda n: 410) as receiver:
        client = await make_client(webhooks=webhooks_section(endpoint("gone", receiver.url)))
        await cancel_one(client, twilio)
        await receiver.wait_for(1)
        await cancel_one(client, twilio, "+14155550109")
        await asyncio.sleep(0.5)
    assert len(receiver.hits) == 1, "nothing is sent to a disabled endpoint"
    disabled = [r for r in caplog.records if "DISABLED" in r.getMessage()]
    assert len(disabled) == 1 and disabled[0].levelno == logging.ERROR
    samples = await scrape(client)
    assert value(samples, "webhook_endpoint_disabled", endpoint="gone") == 1
    assert value(samples, "webhook_undelivered", endpoint="gone") == 0
    assert value(samples, "webhook_failed_attempts_total", endpoint="gone", reason="gone") == 1


async def test_a_redirect_is_not_followed(make_client: MakeClient, twilio: TwilioServer) -> None:
    async with FakeReceiver(lambda n: 307 if n < 2 else 204) as receiver:
        client = await make_client(webhooks=webhooks_section(endpoint("moved", receiver.url)))
        await cancel_one(client, twilio)
        await receiver.wait_for(3)
        await asyncio.sleep(0.3)
    assert receiver.elsewhere == [], "the redirect's target was never reached"
    samples = await scrape(client)
    assert value(samples, "webhook_failed_attempts_total", endpoint="moved", reason="redirect") == 2
    assert value(samples, "webhook_delivered_total", endpoint="moved") == 1


async def test_a_hanging_receiver_delays_neither_sqs_nor_the_other_endpoints(
    make_client: MakeClient,
    twilio: TwilioServer,
    queue_settings: QueueSettings,
    sqs_client: Any,
) -> None:
    async with (
        FakeReceiver(lambda n: "hang") as hanging,
        FakeReceiver() as quick,
    ):
        client = await make_client(
            queue=queue_section(queue_settings),
            webhooks=webhooks_section(
                endpoint("hangs", hanging.url, timeout_seconds=30.0), endpoint("quick", quick.url)
            ),
        )
        await hanging.wait_for(0)
        began = time.monotonic()
        verification_id = await cancel_one(client, twilio)
        [message] = await receive_all(sqs_client, queue_settings.url, 1, seconds=5)
        sqs_seconds = time.monotonic() - began
        await quick.wait_for(1, seconds=2)
        quick_seconds = time.monotonic() - began
        assert len(hanging.hits) == 1, "the hanging receiver has it, and has not answered"
        samples = await scrape(client)
    assert json.loads(message["Body"])["id"] == verification_id
    assert sqs_seconds < 2.0 and quick_seconds < 2.0, (sqs_seconds, quick_seconds)
    assert quick.verified[0]["id"] == verification_id
    assert value(samples, "webhook_undelivered", endpoint="hangs") == 1
    assert value(samples, "webhook_oldest_undelivered_age_seconds", endpoint="hangs") > 0
    assert value(samples, "webhook_undelivered", endpoint="quick") == 0


@pytest.mark.slow
async def test_a_receiver_down_across_a_sigkill_of_the_service_gets_it_once_both_are_back(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    receiver = ReceiverProcess()
    hooks = [endpoint("backend", receiver.url)]
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        **twilio.sender_env,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_WEBHOOKS_ENDPOINTS": json.dumps(hooks),
        "VERIFY_WEBHOOKS_RETRY_FIRST_SECONDS": "0.1",
        "VERIFY_WEBHOOKS_RETRY_MAX_SECONDS": "0.5",
    }
    service = ServiceProcess(env, tmp_path / "service.log")
    await service.start()
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            status, view = await request(
                http, "POST", f"{service.url}/verifications", json={"phone": PHONE}
            )
            assert status == 202, view
            await twilio.wait_for_message(PHONE)
            status, _ = await request(http, "DELETE", f"{service.url}/verifications/{view['id']}")
            assert status == 200
            # The receiver is down: attempts fail, and the outcome waits in the database.
            await asyncio.sleep(0.5)
            await service.kill()
            await receiver.start(tmp_path)
            await service.start()
            [line] = await receiver.wait_for(1)
            await asyncio.sleep(1.0)
    finally:
        await receiver.stop()
        if service.process is not None and service.process.returncode is None:
            await service.kill()
    assert line["id"] == view["id"] and line["status"] == "canceled"
    assert len(receiver.lines) == 1
    assert "not delivered (attempt 1" in service.logs() or "unreachable" in service.logs()


@pytest.mark.slow
async def test_the_receiver_refuses_forged_and_stale_signatures(tmp_path: Path) -> None:
    receiver = ReceiverProcess()
    await receiver.start(tmp_path)
    data = {"event": "verification.completed", "id": "VEforged", "status": "approved"}
    body = json.dumps({"type": "verification.completed", "timestamp": "t", "data": data})

    def headers(secret: str, at: float, msg_id: str = "msg_VEforged") -> dict[str, str]:
        stamp = datetime.fromtimestamp(int(at), tz=UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at)),
            "webhook-signature": Webhook(secret).sign(msg_id, stamp, body),
            "Content-Type": "application/json",
        }

    try:
        async with aiohttp.ClientSession() as http:
            answers = []
            for sent in (
                headers(OTHER_SECRET, time.time()),  # forged: another secret
                headers(SECRET, time.time() - 600),  # stale: ten minutes old
                {"Content-Type": "application/json"},  # unsigned
                {**headers(SECRET, time.time()), "webhook-signature": "v1,bm90IGl0"},
            ):
                async with http.post(receiver.url, data=body, headers=sent) as r:
                    answers.append(r.status)
            assert answers == [401, 401, 401, 401]
            assert receiver.lines == []
            async with http.post(
                receiver.url, data=body, headers=headers(SECRET, time.time())
            ) as r:
                assert r.status == 204
            async with http.post(
                receiver.url, data=body, headers=headers(SECRET, time.time())
            ) as r:
                assert r.status == 204  # a redelivery: answered, not printed twice
            await receiver.wait_for(1)
            await asyncio.sleep(0.3)
    finally:
        await receiver.stop()
    assert receiver.lines == [data]
