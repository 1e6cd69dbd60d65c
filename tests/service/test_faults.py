"""The fault suite: crashes, a failing Twilio, and what is left at rest. Nothing may be lost.

SQS failing (unreachable while outcomes are decided, and unsent outcomes across SIGKILL) is in
test_outcomes.py, next to the queue's other tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from notifier.settings import QueueSettings
from tests.support.api import API_KEY, AUTH, MakeClient, start, submit, wrong
from tests.support.localstack import receive_all
from tests.support.process import ServiceProcess
from tests.support.twilio import TwilioServer

TTL = 2.5


@dataclass
class Tracked:
    """What the load driver saw of one verification."""

    id: str
    phone: str
    plan: str  # "right", "wrong" or "silent"
    approved_seen: bool = False
    answers: list[tuple[int, str]] = field(default_factory=list)


class Load:
    """Starts verifications and answers them (rightly, wrongly, or not at all) through crashes."""

    def __init__(self, service: ServiceProcess, twilio: TwilioServer) -> None:
        self.service = service
        self.twilio = twilio
        self.tracked: list[Tracked] = []
        self.random = random.Random(7)
        self.stopping = False

    async def run(self, http: aiohttp.ClientSession, workers: int) -> None:
        await asyncio.gather(*(self._worker(http, w) for w in range(workers)))

    async def _worker(self, http: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not self.stopping:
            n += 1
            phone = f"+1212555{worker:02d}{n % 100:02d}"
            try:
                await self._one(http, phone)
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.1)  # the service is down: try again when it is back

    async def _one(self, http: aiohttp.ClientSession, phone: str) -> None:
        async with http.post(f"{self.service.url}/verifications", json={"phone": phone}) as r:
            if r.status != 202:
                return
            view = await r.json()
        tracked = Tracked(view["id"], phone, self.random.choice(["right", "wrong", "silent"]))
        self.tracked.append(tracked)
        if tracked.plan == "silent":
            return
        message = await self.twilio.wait_for_message(phone, timeout=TTL * 3)
        code = message.code or ""
        guess = code if tracked.plan == "right" else wrong(code)
        await asyncio.sleep(self.random.uniform(0, TTL * 1.2))
        for _ in range(2):
            url = f"{self.service.url}/verifications/{tracked.id}/code"
            async with http.post(url, json={"code": guess}) as r:
                body = await r.json()
                status = body.get("status") or body.get("verification", {}).get("status", "")
                tracked.answers.append((r.status, status))
                tracked.approved_seen |= r.status == 200 and status == "approved"


@pytest.fixture
async def service(
    tmp_path: Path, twilio: TwilioServer, queue_settings: QueueSettings
) -> AsyncIterator[ServiceProcess]:
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_VERIFICATION_TTL_SECONDS": str(TTL),
        # The longest codes: the bytes searched for them hold some 350 runs of 6 digits (phone
        # numbers, hex ids and SIDs, and fragments of them in free pages), so one of 75 random
        # 6-digit codes turns up by chance in one run in 33; with 10 digits, one in a million.
        "VERIFY_VERIFICATION_CODE_LENGTH": "10",
        **twilio.sender_env,
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_URL": queue_settings.url,
        "VERIFY_QUEUE_ENDPOINT_URL": queue_settings.endpoint_url,
        "VERIFY_QUEUE_RETRY_DELAYS": "0.05,0.1,0.2",
    }
    process = ServiceProcess(env, tmp_path / "service.log")
    yield process
    if process.process is not None and process.process.returncode is None:
        await process.kill()


async def test_crash_loop_loses_nothing(
    service: ServiceProcess,
    twilio: TwilioServer,
    sqs_client: Any,
    queue_settings: QueueSettings,
    tmp_path: Path,
) -> None:
    await service.start()
    load = Load(service, twilio)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as http:
        driving = asyncio.create_task(load.run(http, workers=8))
        try:
            for _ in range(4):
                await asyncio.sleep(1.5)
                await service.kill()
                await asyncio.sleep(0.3)
                await service.start()
        finally:
            # Also when a restart fails: its error, not the load's, is the one to read.
            load.stopping = True
            await driving
        # Every deadline passes; the service stays up to finish what is pending.
        await asyncio.sleep(TTL + 0.5)
        finals = await final_views(http, service.url, load.tracked)

    assert len(load.tracked) >= 20, "the load should have started a fair number"
    seen = {view["status"] for view in finals.values()}
    assert {"approved", "expired"} <= seen, seen
    outcomes = await receive_outcomes(sqs_client, queue_settings.url, set(finals))
    for tracked in load.tracked:
        view = finals[tracked.id]
        assert view["status"] != "pending", view
        # Exactly one final status: the queue (at least once) never disagrees with the view.
        assert outcomes.get(tracked.id) == {view["status"]}, (tracked, view)
        if view["status"] == "approved":
            assert tracked.plan == "right", "approved with a wrong code"
            assert view["completed_at"] <= view["expires_at"], "a code accepted after its deadline"
        if tracked.approved_seen:
            assert view["status"] == "approved", "an acknowledged approval was lost"

    # At rest: no plaintext code in the database files or the logs.
    codes = {m.code for m in twilio.messages if m.code}
    assert codes
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("verifications.db*"))  # noqa: ASYNC240
    logs = service.log_path.read_bytes()
    for code in codes:
        assert code.encode() not in stored, f"code {code} found in the database"
        assert code.encode() not in logs, f"code {code} found in the logs"


async def final_views(
    http: aiohttp.ClientSession, url: str, tracked: list[Tracked], seconds: float = 10
) -> dict[str, dict[str, Any]]:
    """Each verification's view, once none is pending or `seconds` have passed.

    Polled rather than read once after a fixed sleep: on a busy machine a deadline may be
    decided a while after it passed, and what is asked here is that it is decided, not how soon.
    """
    deadline = time.monotonic() + seconds
    while True:
        finals = {}
        for t in tracked:
            async with http.get(f"{url}/verifications/{t.id}") as r:
                assert r.status == 200, await r.text()
                finals[t.id] = await r.json()
        if time.monotonic() > deadline or all(v["status"] != "pending" for v in finals.values()):
            return finals
        await asyncio.sleep(0.1)


async def receive_outcomes(
    sqs_client: Any, queue_url: str, ids: set[str], seconds: float = 20
) -> dict[str, set[str]]:
    """The statuses on the queue by verification id: all of them, until each of `ids` has one
    and the queue is empty, so that a copy which disagrees cannot be left unread.

    Not a count of messages: the queue holds more messages than verifications watched, outcomes
    sent again (SQS took one, the kill came before it was marked sent) and outcomes of
    verifications whose 202 a kill cut off, so a count is reached with some still unread.
    """
    outcomes: dict[str, set[str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = await receive_all(sqs_client, queue_url, count=1, seconds=1)
        for m in batch:
            body = json.loads(m["Body"])
            outcomes.setdefault(body["id"], set()).add(body["status"])
        if not batch and ids <= outcomes.keys():
            break
    return outcomes


async def test_twilio_500s_are_retried_then_fail_with_reason(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(sms={"retry_delays": [0.05, 0.1, 0.2]})
    twilio.set_faults("error500", count=2)
    recovered = await start(client, "+14155550101")
    await twilio.wait_for_message("+14155550101")
    assert twilio.attempts == 3  # two 500s, then through

    twilio.set_faults("error500")
    doomed = await start(client, "+14155550102")
    body = await wait_final(client, doomed["id"])
    assert body["status"] == "failed"
    assert "gave up after 4 tries" in body["reason"]
    r = await client.get(f"/verifications/{recovered['id']}", headers=AUTH)
    assert (await r.json())["status"] == "pending"


async def test_hanging_twilio_blocks_no_one_else(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(sms={"timeout_seconds": 0.5, "retry_delays": []})
    twilio.set_faults("hang", count=1)
    hung = await start(client, "+14155550101")  # its one try hangs until the time-out
    await asyncio.sleep(0.05)
    began = time.monotonic()
    other = await start(client, "+14155550102")
    await twilio.wait_for_message("+14155550102", timeout=0.4)
    assert time.monotonic() - began < 0.4, "a hung SMS held up another verification"

    status, body = await submit(client, other["id"], twilio.code_for("+14155550102"))
    assert (status, body["status"]) == (200, "approved")
    body = await wait_final(client, hung["id"])
    assert body["status"] == "failed" and "did not answer" in body["reason"]


async def wait_final(client: Any, verification_id: str, seconds: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = await client.get(f"/verifications/{verification_id}", headers=AUTH)
        body: dict[str, Any] = await r.json()
        if body["status"] != "pending":
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{verification_id} still pending after {seconds} s")
