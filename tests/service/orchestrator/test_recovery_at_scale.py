"""Many pending at a restart: answered while recovery arms them, none doubled, a stop at once.

Thousands are written into the database behind the service (copies of one it started, each
with an id, a number and a deadline of its own), as if started over the last hours.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.api import API_KEY, AUTH, wrong
from tests.support.database import database
from tests.support.process import ServiceProcess, request
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"
#: Past the count a stop cancels one by one (`CANCEL_IDLE_UP_TO`): the stop leaves them.
MANY = 12_000


def seed(path: Path, count: int) -> list[tuple[str, str]]:
    """Copies of the one verification in the file: (id, phone) of each, the latest deadline last."""
    with database(path) as db:
        db.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO verifications (id, phone, reference, status, salt, attempts_left,
                attempts, created_at, expires_at, sms_sent_at, sms_id, owner, service,
                code_length, resends)
            SELECT printf('VE%032x', i), printf('+1415%07d', 2000000 + i), NULL, 'pending',
                v.salt, 3, 0, v.created_at, v.expires_at + i * 0.01, v.sms_sent_at, 'SMseed',
                v.owner, '', v.code_length, ''
            FROM n, (SELECT * FROM verifications LIMIT 1) AS v
            """,
            (count,),
        )
        rows = db.execute(
            "SELECT id, phone FROM verifications WHERE sms_id = 'SMseed' ORDER BY expires_at"
        ).fetchall()
    return [(str(i), str(p)) for i, p in rows]


@pytest.fixture
async def service(tmp_path: Path, twilio: TwilioServer) -> AsyncIterator[ServiceProcess]:
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_VERIFICATION_TTL_SECONDS": "3600",
        **twilio.sender_env,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_LIMITS_SMS_PER_MINUTE": "1000000",
    }
    process = ServiceProcess(env, tmp_path / "service.log")
    yield process
    if process.process is not None and process.process.returncode is None:
        await process.kill()


async def pending_gauge(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    return samples.get("verifications_pending", -1.0)


@pytest.mark.slow
async def test_a_restart_with_many_pending_answers_each_once_and_stops_at_once(
    service: ServiceProcess, twilio: TwilioServer, tmp_path: Path
) -> None:
    await service.start()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        status, first = await request(
            http, "POST", f"{service.url}/verifications", json={"phone": PHONE}
        )
        assert status == 202, first
        code = (await twilio.wait_for_message(PHONE)).code or ""
        assert await service.stop() == 0
        seeded = seed(tmp_path / "verifications.db", MANY)
        last_id, last_phone = seeded[-1]

        await service.start()
        # At once, whether recovery has reached them or not: a start for a pending number is
        # that verification (its code sent again), never a second one; reads, codes, cancels.
        answers: list[Any] = await asyncio.gather(
            request(http, "POST", f"{service.url}/verifications", json={"phone": last_phone}),
            request(http, "GET", f"{service.url}/verifications/{seeded[-2][0]}"),
            request(
                http,
                "POST",
                f"{service.url}/verifications/{seeded[-3][0]}/code",
                json={"code": wrong(code)},
            ),
            request(http, "DELETE", f"{service.url}/verifications/{seeded[-4][0]}"),
            request(
                http, "POST", f"{service.url}/verifications/{first['id']}/code", json={"code": code}
            ),
        )
        (s1, again), (s2, read), (s3, missed), (s4, canceled), (s5, approved) = answers
        assert (s1, again.get("id")) == (202, last_id), again
        assert (s2, read["status"]) == (200, "pending"), read
        assert (s3, missed["attempts_left"]) == (200, 2), missed
        assert (s4, canceled["status"]) == (200, "canceled"), canceled
        assert (s5, approved["status"]) == (200, "approved"), approved
        await twilio.wait_for_message(last_phone)  # the SMS goes out from a task of its own

        # Every one is armed in the end, the canceled one not again.
        for _ in range(200):
            if await pending_gauge(http, service.url) == MANY - 1:
                break
            await asyncio.sleep(0.05)
        assert await pending_gauge(http, service.url) == MANY - 1
        status, view = await request(http, "GET", f"{service.url}/verifications/{seeded[-4][0]}")
        assert view["status"] == "canceled"
        assert [m.to for m in twilio.messages_to(last_phone)] == [last_phone], "sent once"

        # A stop leaves the idle ones as they are (on disk): exit 0, nothing complained of.
        assert await service.stop() == 0
        assert "Task was destroyed" not in service.logs()
        await service.start()
        for _ in range(200):
            if await pending_gauge(http, service.url) == MANY - 1:
                break
            await asyncio.sleep(0.05)
        assert await pending_gauge(http, service.url) == MANY - 1
        assert await service.stop() == 0
