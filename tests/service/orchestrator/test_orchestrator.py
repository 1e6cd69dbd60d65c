"""The verification's life through HTTP: approved, wrong codes, expiry, cancel, and races."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.api import AUTH, MakeClient, MakeSettings, start, submit, wrong
from tests.support.database import database
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


def outbox(db_path: str) -> list[tuple[str, str]]:
    with database(db_path) as db:
        return db.execute("SELECT verification_id, status FROM outbox ORDER BY seq").fetchall()


async def test_right_code_approves(client: Any, twilio: TwilioServer) -> None:
    view = await start(client, PHONE, reference="signup-42")
    assert view["status"] == "pending" and view["attempts_left"] == 3
    message = await twilio.wait_for_message(PHONE)
    assert message.from_ == "+15005550006"

    status, after = await submit(client, view["id"], twilio.code_for(PHONE))

    assert status == 200, after
    assert after["status"] == "approved"
    assert after["completed_at"] is not None and after["reference"] == "signup-42"
    r = await client.get(f"/verifications/{view['id']}", headers=AUTH)
    assert (await r.json())["status"] == "approved"


async def test_wrong_codes_until_max_attempts(client: Any, twilio: TwilioServer) -> None:
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code
    assert code is not None

    answers = [await submit(client, view["id"], wrong(code)) for _ in range(3)]

    assert [(s, v["status"], v["attempts_left"]) for s, v in answers] == [
        (200, "pending", 2),
        (200, "pending", 1),
        (200, "max_attempts_reached", 0),
    ]
    status, body = await submit(client, view["id"], code)
    assert status == 409
    assert body["verification"]["status"] == "max_attempts_reached"


async def test_no_answer_expires(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client(verification={"ttl_seconds": 0.3})
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code
    assert code is not None
    await asyncio.sleep(0.5)

    r = await client.get(f"/verifications/{view['id']}", headers=AUTH)
    assert (await r.json())["status"] == "expired"
    status, body = await submit(client, view["id"], code)
    assert status == 409 and body["verification"]["status"] == "expired"


async def test_cancel(client: Any, twilio: TwilioServer) -> None:
    view = await start(client, PHONE)
    await twilio.wait_for_message(PHONE)

    r = await client.delete(f"/verifications/{view['id']}", headers=AUTH)
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "canceled"

    r = await client.delete(f"/verifications/{view['id']}", headers=AUTH)
    assert r.status == 409
    assert (await r.json())["verification"]["status"] == "canceled"
    status, _ = await submit(client, view["id"], twilio.code_for(PHONE))
    assert status == 409


async def test_every_final_status_writes_one_outcome(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(verification={"ttl_seconds": 0.5})
    client = await make_client(settings)
    phones = ["+14155550101", "+14155550102", "+14155550103", "+14155550104"]
    ids = [(await start(client, p))["id"] for p in phones]
    codes = [(await twilio.wait_for_message(p)).code or "" for p in phones]
    await submit(client, ids[0], codes[0])
    for _ in range(3):
        await submit(client, ids[1], wrong(codes[1]))
    await client.delete(f"/verifications/{ids[2]}", headers=AUTH)
    await asyncio.sleep(0.7)

    assert sorted(outbox(settings.database.path)) == sorted(
        zip(ids, ["approved", "max_attempts_reached", "canceled", "expired"], strict=True)
    )


async def test_concurrent_wrong_codes_never_overspend(client: Any, twilio: TwilioServer) -> None:
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""

    answers = await asyncio.gather(*(submit(client, view["id"], wrong(code)) for _ in range(10)))

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 3 + [409] * 7
    finals = [body["status"] for status, body in answers if status == 200]
    assert sorted(finals) == ["max_attempts_reached", "pending", "pending"]


async def test_concurrent_right_codes_approve_once(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings()
    client = await make_client(settings)
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""

    answers = await asyncio.gather(*(submit(client, view["id"], code) for _ in range(10)))

    assert sorted(s for s, _ in answers) == [200] + [409] * 9
    assert outbox(settings.database.path) == [(view["id"], "approved")]


async def test_code_racing_the_deadline_decides_once(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    ttl = 0.4
    settings = make_settings(verification={"ttl_seconds": ttl})
    client = await make_client(settings)
    rounds = 12
    outcomes = []
    for i in range(rounds):
        phone = f"+1415555{200 + i:04d}"
        view = await start(client, phone)
        code = (await twilio.wait_for_message(phone)).code or ""
        # Aim the answers around the deadline: some just before, some just after.
        await asyncio.sleep(max(0.0, ttl - 0.07 + 0.01 * i))
        answers = await asyncio.gather(*(submit(client, view["id"], code) for _ in range(3)))
        winners = [body for status, body in answers if status == 200]
        losers = [body["verification"] for status, body in answers if status == 409]
        assert len(winners) + len(losers) == 3
        assert len(winners) <= 1
        final = {v["status"] for v in winners + losers}
        assert len(final) == 1, answers
        if winners:
            assert final == {"approved"}
        else:
            assert final == {"expired"}
        outcomes.append(final.pop())
    await asyncio.sleep(ttl)
    recorded = outbox(settings.database.path)
    assert len(recorded) == rounds
    assert [status for _, status in recorded] == outcomes


async def test_code_sent_while_sms_is_retried_is_not_lost(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(sms={"retry_delays": [0.3]})
    twilio.set_faults("error500", count=1)
    view = await start(client, PHONE)

    # The SMS is still being retried: the task is not waiting yet, so the code must be buffered.
    status, body = await submit(client, view["id"], "000000")
    await twilio.wait_for_message(PHONE)

    code = twilio.code_for(PHONE)
    if code == "000000":  # one in a million: the guess was right
        assert body["status"] == "approved"
        return
    assert (status, body["status"], body["attempts_left"]) == (200, "pending", 2)


async def test_sms_refused_ends_failed_with_reason(client: Any, twilio: TwilioServer) -> None:
    view = await start(client, "+15005550001")
    for _ in range(50):
        r = await client.get(f"/verifications/{view['id']}", headers=AUTH)
        body = await r.json()
        if body["status"] != "pending":
            break
        await asyncio.sleep(0.02)
    assert body["status"] == "failed"
    assert "21211" in body["reason"]


async def test_second_start_for_pending_phone_resends_same_code(
    client: Any, twilio: TwilioServer
) -> None:
    first = await start(client, PHONE)
    one = await twilio.wait_for_message(PHONE)
    second = await start(client, PHONE)
    two = await twilio.wait_for_message(PHONE)

    assert second["id"] == first["id"]
    assert one.code == two.code


async def test_idempotency_key_returns_same_verification_and_one_sms(
    client: Any, twilio: TwilioServer
) -> None:
    headers = {**AUTH, "Idempotency-Key": "signup-7f3a"}
    body = {"phone": PHONE}
    first = await client.post("/verifications", json=body, headers=headers)
    await twilio.wait_for_message(PHONE)
    code = twilio.code_for(PHONE)
    await submit(client, (await first.json())["id"], code)
    again = await client.post("/verifications", json=body, headers=headers)

    assert again.status == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == (await first.json())["id"]
    assert (await again.json())["status"] == "approved"
    assert len(twilio.messages_to(PHONE)) == 1

    other = await client.post("/verifications", json={"phone": "+14155550199"}, headers=headers)
    assert other.status == 422
    assert (await other.json())["error"]["code"] == "idempotency_key_reused"
