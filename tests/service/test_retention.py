"""Retention: finished verifications are masked, then forgotten, and so are their outcomes and
idempotency keys; an outcome never delivered goes when its verification does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.api import AUTH, MakeClient, MakeSettings, start
from tests.support.database import database
from tests.support.metrics import scrape, value
from tests.support.twilio import TwilioServer

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
    with database(settings.database.path) as db:
        db.execute("UPDATE outbox SET sent_at = created_at")

    await asyncio.sleep(0.5)
    status, body = await status_of(client, view["id"])
    assert status == 200 and body["to"] == "+14*****00"

    await asyncio.sleep(1.0)
    status, _ = await status_of(client, view["id"])
    assert status == 404
    with database(settings.database.path) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def outbox(path: str) -> list[tuple[str, Any, str]]:
    with database(path) as db:
        return db.execute("SELECT verification_id, sent_at, body FROM outbox").fetchall()


async def finished(client: Any, twilio: TwilioServer, phone: str = PHONE, **headers: str) -> str:
    """Start a verification and cancel it; its outcome waits in the outbox (the queue is off)."""
    r = await client.post("/verifications", json={"phone": phone}, headers={**AUTH, **headers})
    assert r.status == 202, await r.text()
    verification_id = str((await r.json())["id"])
    await twilio.wait_for_message(phone)
    r = await client.delete(f"/verifications/{verification_id}", headers=AUTH)
    assert r.status == 200, await r.text()
    return verification_id


async def test_delivered_outcomes_go_after_their_own_retention(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings(
        retention={"keep_sent_outcomes_seconds": 0.3, "sweep_interval_seconds": 0.1}
    )
    client = await make_client(settings)
    verification_id = await finished(client, twilio)
    with database(settings.database.path) as db:
        db.execute("UPDATE outbox SET sent_at = created_at")

    await asyncio.sleep(0.8)
    # Gone after its 0.3 s, while its verification stays for the 7 days finished ones are kept.
    assert outbox(settings.database.path) == []
    status, body = await status_of(client, verification_id)
    assert (status, body["status"]) == (200, "canceled")


async def test_masking_a_number_masks_it_in_its_outcome_too(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings(
        retention={"redact_phone_after_seconds": 0.2, "sweep_interval_seconds": 0.1}
    )
    client = await make_client(settings)
    verification_id = await finished(client, twilio)
    [(_, _, before)] = outbox(settings.database.path)

    await asyncio.sleep(0.6)
    status, view = await status_of(client, verification_id)
    assert (status, view["to"]) == (200, "+14*****00")
    [(_, _, after)] = outbox(settings.database.path)
    assert json.loads(after) == {**json.loads(before), "to": "+14*****00"}


async def test_undelivered_outcomes_are_dropped_with_their_verification_when_it_expires(
    make_settings: MakeSettings,
    make_client: MakeClient,
    twilio: TwilioServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The queue is off in the tests' settings: nothing is ever delivered.
    settings = make_settings(
        retention={"keep_finished_seconds": 0.3, "sweep_interval_seconds": 0.1}
    )
    client = await make_client(settings)
    verification_id = await finished(client, twilio)

    await asyncio.sleep(0.8)
    assert outbox(settings.database.path) == []
    status, _ = await status_of(client, verification_id)
    assert status == 404
    samples = await scrape(client)
    assert value(samples, "outbox_outcomes_dropped_total") == 1
    assert value(samples, "outbox_depth") == 0
    assert "retention dropped 1 outcome(s) never delivered" in caplog.text


async def test_idempotency_keys_are_forgotten_with_finished_verifications(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings(
        retention={"keep_finished_seconds": 0.3, "sweep_interval_seconds": 0.1}
    )
    client = await make_client(settings)
    await finished(client, twilio, **{"Idempotency-Key": "signup-42"})
    with database(settings.database.path) as db:
        assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 1

    await asyncio.sleep(0.8)
    with database(settings.database.path) as db:
        assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 0


async def test_outbox_depth_is_kept_by_the_store_not_counted_at_each_scrape(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings()
    client = await make_client(settings)
    for phone in ("+14155550101", "+14155550102"):
        await finished(client, twilio, phone)
    assert value(await scrape(client), "outbox_depth") == 2
    # A record added behind the store's back is not seen: /metrics counts no rows...
    with database(settings.database.path) as db:
        db.execute(
            "INSERT INTO outbox (verification_id, status, body, created_at)"
            " SELECT 'VE-by-hand', status, body, created_at FROM outbox LIMIT 1"
        )
    samples = await scrape(client)
    assert value(samples, "outbox_depth") == 2
    assert value(samples, "outbox_oldest_age_seconds") > 0
    await client.close()

    # ...the store counts them once, when it opens, then keeps the count as records go.
    again = await make_client(settings)
    assert value(await scrape(again), "outbox_depth") == 3
    await again.close()
    dropping = await make_client(
        retention={"keep_finished_seconds": 0.3, "sweep_interval_seconds": 0.1}
    )
    await asyncio.sleep(0.8)
    samples = await scrape(dropping)
    assert value(samples, "outbox_outcomes_dropped_total") == 3
    assert value(samples, "outbox_depth") == 0
    assert value(samples, "outbox_oldest_age_seconds") == 0
