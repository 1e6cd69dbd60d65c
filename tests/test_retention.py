"""Retention: finished verifications are masked, then forgotten; undelivered outcomes are kept."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from tests.conftest import AUTH, MakeClient, MakeSettings, start
from tests.twilio_server import TwilioServer

PHONE = "+14155550100"


async def status_of(client: Any, verification_id: str) -> tuple[int, dict[str, Any]]:
    r = await client.get(f"/verifications/{verification_id}", headers=AUTH)
    return r.status, await r.json()


async def test_finished_rows_are_masked_then_purged(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings(
        retention={
            "redact_phone_after_seconds": 0.2,
            "keep_finished_seconds": 1.0,
            "keep_sent_outcomes_seconds": 0.5,
            "sweep_interval_seconds": 0.1,
        }
    )
    client = await make_client(settings)
    view = await start(client, PHONE)
    await twilio.wait_for_message(PHONE)
    await client.delete(f"/verifications/{view['id']}", headers=AUTH)
    # Publishing is off in tests, so the outcome is undelivered: pretend the queue took it.
    with sqlite3.connect(settings.database.path) as db:
        db.execute("UPDATE outbox SET sent_at = created_at")

    await asyncio.sleep(0.5)
    status, body = await status_of(client, view["id"])
    assert status == 200 and body["to"] == "+14*****00"

    await asyncio.sleep(1.0)
    status, _ = await status_of(client, view["id"])
    assert status == 404
    with sqlite3.connect(settings.database.path) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


async def test_undelivered_outcome_keeps_its_verification(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(
        retention={"keep_finished_seconds": 0.1, "sweep_interval_seconds": 0.1}
    )
    view = await start(client, PHONE)
    await twilio.wait_for_message(PHONE)
    await client.delete(f"/verifications/{view['id']}", headers=AUTH)
    await asyncio.sleep(0.5)
    status, body = await status_of(client, view["id"])
    assert (status, body["status"]) == (200, "canceled")
