"""Durability: a restart, graceful or SIGKILL, loses nothing; pending verifications resume."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.api import API_KEY, AUTH, MakeClient, MakeSettings, start, submit
from tests.support.database import database
from tests.support.process import ServiceProcess, request
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


async def test_graceful_restart_resumes_pending(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings()
    first = await make_client(settings)
    view = await start(first, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""
    await first.close()

    second = await make_client(settings)
    status, body = await submit(second, view["id"], code)

    assert (status, body["status"]) == (200, "approved")
    assert len(twilio.messages_to(PHONE)) == 1


async def test_unconfirmed_sms_is_sent_again_with_the_same_code(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings()
    first = await make_client(settings)
    view = await start(first, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code
    await first.close()
    # As if the process died after Twilio took the message but before the send was checkpointed.
    with database(settings.database.path) as db:
        db.execute("UPDATE verifications SET sms_sent_at = NULL, sms_id = NULL")

    second = await make_client(settings)
    again = await twilio.wait_for_message(PHONE)

    assert again.code == code
    status, body = await submit(second, view["id"], code or "")
    assert (status, body["status"]) == (200, "approved")


@pytest.fixture
async def service(tmp_path: Path, twilio: TwilioServer) -> AsyncIterator[ServiceProcess]:
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_VERIFICATION_TTL_SECONDS": "6",
        **twilio.sender_env,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_AUTH_API_KEYS": API_KEY,
    }
    process = ServiceProcess(env, tmp_path / "service.log")
    yield process
    if process.process is not None and process.process.returncode is None:
        await process.kill()


@pytest.mark.slow
async def test_sigkill_loses_nothing(service: ServiceProcess, twilio: TwilioServer) -> None:
    await service.start()
    async with aiohttp.ClientSession(headers=AUTH) as http:

        async def begin(phone: str) -> dict[str, Any]:
            status, view = await request(
                http, "POST", f"{service.url}/verifications", json={"phone": phone}
            )
            assert status == 202, view
            return view

        early = await begin("+14155550101")
        await asyncio.sleep(4.0)
        late = await begin("+14155550102")
        wrong = await begin("+14155550103")
        codes = {}
        for phone in ("+14155550101", "+14155550102", "+14155550103"):
            codes[phone] = (await twilio.wait_for_message(phone)).code
        status, body = await request(
            http, "POST", f"{service.url}/verifications/{wrong['id']}/code", json={"code": "000000"}
        )
        assert status == 200 and body["attempts_left"] == 2, body

        await service.kill()
        # Down long enough for the early one's deadline to pass, not the late one's.
        await asyncio.sleep(max(0.0, 6.3 - 4.0))
        await service.start()

        _, body = await request(http, "GET", f"{service.url}/verifications/{early['id']}")
        assert body["status"] == "expired"
        _, body = await request(http, "GET", f"{service.url}/verifications/{wrong['id']}")
        assert (body["status"], body["attempts_left"]) == ("pending", 2)
        status, body = await request(
            http,
            "POST",
            f"{service.url}/verifications/{late['id']}/code",
            json={"code": codes["+14155550102"]},
        )
        assert (status, body["status"]) == (200, "approved"), service.logs()
        # Nothing was sent twice: each SMS was confirmed before the crash.
        assert len(twilio.messages) == 3
        assert await service.stop() == 0


@pytest.mark.slow
async def test_sigkill_before_sms_confirmed_resends_the_same_code(
    service: ServiceProcess, twilio: TwilioServer
) -> None:
    # Twilio takes the message but its answer never arrives: the send is not checkpointed.
    twilio.set_faults("accept_then_hang")
    await service.start()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        status, view = await request(
            http, "POST", f"{service.url}/verifications", json={"phone": PHONE}
        )
        assert status == 202, view
        first = await twilio.wait_for_message(PHONE)
        await service.kill()
        twilio.set_faults("none")
        await service.start()

        again = await twilio.wait_for_message(PHONE)
        assert again.code == first.code
        status, body = await request(
            http,
            "POST",
            f"{service.url}/verifications/{view['id']}/code",
            json={"code": first.code},
        )
        assert (status, body["status"]) == (200, "approved"), service.logs()


async def test_a_clock_set_back_does_not_stretch_a_codes_life(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings(verification={"ttl_seconds": 30.0})
    first = await make_client(settings)
    view = await start(first, PHONE)
    await twilio.wait_for_message(PHONE)
    await first.close()
    # As if the wall clock was an hour ahead when it started, and has since been set right.
    with database(settings.database.path) as db:
        db.execute("UPDATE verifications SET expires_at = expires_at + 3600")

    second = await make_client(settings)
    r = await second.get(f"/verifications/{view['id']}", headers=AUTH)
    body = await r.json()

    assert _seconds(body["expires_at"]) <= time.time() + 30.0, body
    with database(settings.database.path) as db:
        (expires_at,) = db.execute("SELECT expires_at FROM verifications").fetchone()
    assert expires_at <= time.time() + 30.0  # on disk too: a second restart gives no more


def _seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
