"""Metrics through HTTP: a verification's life shows up in GET /metrics, per app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from service.metrics import Metrics
from service.models import Status, Verification
from tests.support.api import AUTH, MakeClient, start, submit
from tests.support.metrics import scrape, value
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


async def until_final(client: Any, verification_id: str) -> dict[str, Any]:
    for _ in range(100):
        r = await client.get(f"/verifications/{verification_id}", headers=AUTH)
        view: dict[str, Any] = await r.json()
        if view["status"] != "pending":
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"{verification_id} is still pending")


async def test_an_approved_verification_is_counted(client: Any, twilio: TwilioServer) -> None:
    view = await start(client, PHONE)
    await twilio.wait_for_message(PHONE)
    pending = await scrape(client)
    assert value(pending, "verifications_pending") == 1

    status, approved = await submit(client, view["id"], twilio.code_for(PHONE))
    assert status == 200 and approved["status"] == "approved", approved
    samples = await scrape(client)

    assert value(samples, "verifications_started_total") == 1
    assert value(samples, "verifications_finished_total", status="approved") == 1
    assert (
        value(
            samples, "verifications_finished_by_country_total", country_code="1", status="approved"
        )
        == 1
    )
    assert value(samples, "sms_sent_total") == 1
    assert value(samples, "sms_failed_total") == 0
    assert value(samples, "verifications_pending") == 0
    # The queue is off in the tests' settings, so the outcome waits in the outbox.
    assert value(samples, "outbox_depth") == 1
    assert value(samples, "outbox_oldest_age_seconds") >= 0
    latency = "http_request_duration_seconds_count"
    assert value(samples, latency, route="/verifications", method="POST", status="202") == 1
    assert (
        value(samples, latency, route="/verifications/{id}/code", method="POST", status="200") == 1
    )


async def test_failed_sms_and_refused_starts_are_counted(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(limits={"sms_per_phone": 1})
    # Twilio's magic number: refused as "not a valid phone number", so the verification fails.
    failed = await start(client, "+15005550001")
    r = await client.post("/verifications", json={"phone": "+15005550001"}, headers=AUTH)
    assert r.status == 429, await r.text()
    await until_final(client, failed["id"])
    samples = await scrape(client)

    assert value(samples, "sms_failed_total") == 1
    assert value(samples, "verifications_finished_total", status="failed") == 1
    assert value(samples, "verification_starts_refused_total", reason="rate_limited_phone") == 1


async def test_unmatched_routes_share_one_label(client: Any) -> None:
    for path in ("/nowhere", "/elsewhere/42"):
        assert (await client.get(path)).status == 404
    r = await client.request("PROPFIND", "/healthz")
    assert r.status == 405
    samples = await scrape(client)

    latency = "http_request_duration_seconds_count"
    assert value(samples, latency, route="unmatched", method="GET", status="404") == 2
    assert value(samples, latency, route="unmatched", method="other", status="405") == 1


async def test_each_app_has_its_own_registry(make_client: MakeClient, tmp_path: Path) -> None:
    # Each app its own database: a database is held by one app at a time.
    first = await make_client()
    second = await make_client(database={"path": str(tmp_path / "second.db"), "url": ""})
    await start(first, PHONE)
    assert value(await scrape(first), "verifications_started_total") == 1
    assert value(await scrape(second), "verifications_started_total") == 0


def test_a_number_that_does_not_parse_is_counted_as_unknown() -> None:
    metrics = Metrics()
    masked = Verification(
        id="VE1",
        phone="+4*****00",
        reference=None,
        status=Status.EXPIRED,
        salt=b"",
        attempts_left=3,
        attempts=0,
        created_at=0.0,
        expires_at=1.0,
        completed_at=1.0,
    )
    metrics.finished(masked)
    labels = {"country_code": "unknown", "status": "expired"}
    total = metrics.registry.get_sample_value("verifications_finished_by_country_total", labels)
    assert total == 1
