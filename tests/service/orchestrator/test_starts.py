"""Starting: one pending verification per number however the starts interleave, and
Idempotency-Key honoured on every path."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from tests.support.api import AUTH, MakeClient, MakeSettings
from tests.support.database import database
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


async def post(client: Any, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    r = await client.post("/verifications", json=body, headers={**AUTH, **headers})
    return r.status, await r.json()


async def test_concurrent_starts_for_one_number_make_one_verification(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(limits={"sms_per_phone": 50})
    client = await make_client(settings)

    async def late(n: int) -> tuple[int, dict[str, Any]]:
        await asyncio.sleep(n * 0.002)  # waves: some arrive while others wait, some after
        return await post(client, {"phone": PHONE})

    answers = await asyncio.gather(*(late(n % 4) for n in range(8)))

    assert {status for status, _ in answers} == {202}
    assert len({body["id"] for _, body in answers}) == 1
    with database(settings.database.path) as db:
        (rows,) = db.execute("SELECT count(*) FROM verifications").fetchone()
    assert rows == 1
    messages = [await twilio.wait_for_message(PHONE) for _ in range(8)]
    assert len({m.code for m in messages}) == 1, "one verification, one code"


async def test_concurrent_starts_with_one_idempotency_key_make_one_verification_one_sms(
    client: Any, twilio: TwilioServer
) -> None:
    key = {"Idempotency-Key": "double-click"}
    answers = await asyncio.gather(*(post(client, {"phone": PHONE}, **key) for _ in range(6)))

    assert {status for status, _ in answers} == {202}
    assert len({body["id"] for _, body in answers}) == 1
    await twilio.wait_for_message(PHONE)
    await asyncio.sleep(0.3)
    assert len(twilio.messages_to(PHONE)) == 1


async def test_a_replayed_key_on_the_resend_path_sends_nothing(
    client: Any, twilio: TwilioServer
) -> None:
    status, first = await post(client, {"phone": PHONE})
    await twilio.wait_for_message(PHONE)

    # A second start, with a key, resends the code of the pending verification...
    status, resent = await post(client, {"phone": PHONE}, **{"Idempotency-Key": "retry-1"})
    assert (status, resent["id"]) == (202, first["id"])
    await twilio.wait_for_message(PHONE)
    # ...and the client retrying that very request is a replay: no third SMS.
    r = await client.post(
        "/verifications", json={"phone": PHONE}, headers={**AUTH, "Idempotency-Key": "retry-1"}
    )
    assert r.status == 202
    assert r.headers["Idempotent-Replayed"] == "true"
    assert (await r.json())["id"] == first["id"]
    await asyncio.sleep(0.3)
    assert len(twilio.messages_to(PHONE)) == 2
    # The same key with another body is refused, on this path too.
    status, body = await post(
        client, {"phone": PHONE, "reference": "x"}, **{"Idempotency-Key": "retry-1"}
    )
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")


async def test_idempotency_key_outlives_a_restart(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings()
    first = await make_client(settings)
    status, view = await post(first, {"phone": PHONE}, **{"Idempotency-Key": "k"})
    await twilio.wait_for_message(PHONE)
    await first.close()

    second = await make_client(settings)
    status, again = await post(second, {"phone": PHONE}, **{"Idempotency-Key": "k"})

    assert (status, again["id"]) == (202, view["id"])
    await asyncio.sleep(0.3)
    assert len(twilio.messages_to(PHONE)) == 1


async def test_commands_waiting_for_one_verification_are_capped(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(
        verification={"max_queued_commands": 3},
        database={"busy_timeout_ms": 50, "write_retry_seconds": 1.0},
    )
    client = await make_client(settings)
    _, view = await post(client, {"phone": PHONE})
    code = (await twilio.wait_for_message(PHONE)).code or ""
    url = f"/verifications/{view['id']}/code"
    # The database locked: the first code is retried, so the others queue behind it.
    db = sqlite3.connect(settings.database.path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        answers = await asyncio.gather(
            *(client.post(url, json={"code": code}, headers=AUTH) for _ in range(8))
        )
    finally:
        db.execute("ROLLBACK")
        db.close()

    statuses = sorted(a.status for a in answers)
    assert statuses.count(429) >= 4, statuses
    refused = next(a for a in answers if a.status == 429)
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "too_many_requests"


async def test_a_start_racing_the_end_of_its_verification_is_answered_with_a_live_one(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(limits={"sms_per_phone": 1000})
    for trial in range(30):
        _, view = await post(client, {"phone": PHONE})
        url = f"/verifications/{view['id']}"
        key = {"Idempotency-Key": f"race-{trial}"} if trial % 2 else {}
        # The cancel and the start race: whichever the task takes first, the start must be
        # answered, and with a verification that is still pending (the old one, or a new one).
        cancel = client.delete(url, headers=AUTH)
        again = asyncio.wait_for(post(client, {"phone": PHONE}, **key), timeout=5)
        (_, (status, body)) = await asyncio.gather(cancel, again)
        assert status == 202, body
        assert body["status"] == "pending", (trial, body)
        await client.delete(f"/verifications/{body['id']}", headers=AUTH)


async def test_a_start_the_database_refused_is_not_counted_against_the_limits(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(
        limits={"sms_per_phone": 2}, database={"busy_timeout_ms": 50, "write_retry_seconds": 0.1}
    )
    client = await make_client(settings)
    db = sqlite3.connect(settings.database.path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        refused = [await post(client, {"phone": PHONE}) for _ in range(4)]
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert {status for status, _ in refused} == {503}

    status, body = await post(client, {"phone": PHONE})

    assert status == 202, body  # the four 503s sent nothing, so counted nothing


async def test_a_resend_with_a_new_key_is_not_called_a_replay(
    client: Any, twilio: TwilioServer
) -> None:
    await post(client, {"phone": PHONE})
    r = await client.post(
        "/verifications", json={"phone": PHONE}, headers={**AUTH, "Idempotency-Key": "new"}
    )
    assert r.headers["Idempotent-Replayed"] == "false"  # a resend: an SMS went out
    r = await client.post(
        "/verifications", json={"phone": PHONE}, headers={**AUTH, "Idempotency-Key": "new"}
    )
    assert r.headers["Idempotent-Replayed"] == "true"
