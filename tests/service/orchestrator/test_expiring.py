"""Expired while down: recovery has the orchestrator decide it, as its deadline would have, once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from service.api.keys import orchestrator_key, store_key
from service.models import Status
from tests.support.api import AUTH, MakeClient, MakeSettings, start
from tests.support.database import database
from tests.support.metrics import scrape, value
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


async def test_a_verification_that_expired_while_down_is_expired_at_its_deadline_and_counted(
    make_settings: MakeSettings, make_client: MakeClient, twilio: TwilioServer
) -> None:
    settings = make_settings(verification={"ttl_seconds": 0.3})
    first = await make_client(settings)
    view = await start(first, PHONE)
    await twilio.wait_for_message(PHONE)
    await first.close()
    await asyncio.sleep(0.5)

    second = await make_client(settings)
    r = await second.get(f"/verifications/{view['id']}", headers=AUTH)
    body = await r.json()

    assert body["status"] == "expired"
    assert body["completed_at"] == body["expires_at"]
    samples = await scrape(second)
    assert value(samples, "verifications_finished_total", status="expired") == 1
    with database(settings.database.path) as db:
        outbox = db.execute("SELECT verification_id, status FROM outbox").fetchall()
    assert outbox == [(view["id"], "expired")]

    # A second recovery that read it while still pending: the store refuses, nothing is told.
    expired = await second.app[store_key].get(view["id"])
    assert expired is not None
    stale = replace(expired, status=Status.PENDING, completed_at=None)
    await second.app[orchestrator_key].expire([stale])
    samples = await scrape(second)
    assert value(samples, "verifications_finished_total", status="expired") == 1
