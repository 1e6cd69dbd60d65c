"""The SMS challenge: resends never end a live verification, no SMS after the deadline, the
time left stated truly, every try charged to the limits, and a crowd of sends paced."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from tests.support.api import AUTH, MakeClient, start, submit
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


async def view_of(client: Any, verification_id: str) -> dict[str, Any]:
    r = await client.get(f"/verifications/{verification_id}", headers=AUTH)
    body: dict[str, Any] = await r.json()
    return body


async def test_a_failing_resend_leaves_the_verification_pending_with_its_code(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(sms={"retry_delays": [0.3, 0.3]})
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""
    twilio.set_faults("error500")

    began = time.monotonic()
    again = await start(client, PHONE)  # the resend: Twilio fails it three times over 0.6 s
    assert time.monotonic() - began < 0.3, "the start waited for Twilio's retries"
    assert (again["id"], again["status"]) == (view["id"], "pending")
    await asyncio.sleep(0.9)  # every retry spent
    assert twilio.attempts == 4
    assert (await view_of(client, view["id"]))["status"] == "pending"

    twilio.set_faults("none")
    status, body = await submit(client, view["id"], code)
    assert (status, body["status"]) == (200, "approved")


async def test_codes_and_cancels_are_handled_while_a_resend_retries(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(sms={"retry_delays": [1.0, 1.0]})
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""
    twilio.set_faults("hang")
    await start(client, PHONE)  # the resend hangs on Twilio

    began = time.monotonic()
    status, body = await submit(client, view["id"], code)

    assert (status, body["status"]) == (200, "approved")
    assert time.monotonic() - began < 0.5


async def test_no_sms_try_starts_after_the_deadline(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(
        verification={"ttl_seconds": 1.0}, sms={"retry_delays": [0.4, 0.4, 0.4, 0.4, 0.4]}
    )
    twilio.set_faults("error500")
    view = await start(client, PHONE)

    await asyncio.sleep(2.0)

    assert twilio.attempts == 3  # at 0, 0.4 and 0.8 s; the one due at 1.2 s is never made
    assert (await view_of(client, view["id"]))["status"] == "expired"


async def test_the_message_states_the_time_actually_left(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verification={"ttl_seconds": 30}, sms={"retry_delays": [1.5]})
    twilio.set_faults("error500", count=1)
    await start(client, PHONE)

    message = await twilio.wait_for_message(PHONE)

    seconds = int(re.search(r"expires in (\d+) seconds", message.body).group(1))  # type: ignore[union-attr]
    assert 27 <= seconds <= 28, message.body  # 30 s less the 1.5 s it waited, rounded down


async def test_retries_count_toward_the_per_number_limit(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(
        limits={"sms_per_phone": 2}, sms={"retry_delays": [0.05, 0.05, 0.05]}
    )
    twilio.set_faults("error500")
    view = await start(client, PHONE)

    await asyncio.sleep(0.5)

    assert twilio.attempts == 2  # the start and one retry: the number's two SMS
    body = await view_of(client, view["id"])
    assert body["status"] == "failed" and "limit" in body["reason"], body
    twilio.set_faults("none")
    r = await client.post("/verifications", json={"phone": PHONE}, headers=AUTH)
    assert r.status == 429


async def test_many_sends_at_once_are_paced_and_none_times_out_waiting(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(sms={"max_concurrent_sends": 3, "timeout_seconds": 0.5})
    twilio.delay = 0.2
    phones = [f"+1415555{n:04d}" for n in range(200, 212)]

    views = [await start(client, phone) for phone in phones]
    for phone in phones:
        await twilio.wait_for_message(phone, timeout=5)

    assert twilio.max_in_flight == 3
    assert twilio.attempts == len(phones), "a send timed out waiting for its turn"
    assert {(await view_of(client, v["id"]))["status"] for v in views} == {"pending"}


async def test_a_stop_waits_for_an_sms_in_flight_but_not_for_the_whole_grace(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(server={"shutdown_grace_seconds": 5.0})
    twilio.delay = 0.3
    await start(client, PHONE)
    await asyncio.sleep(0.05)  # the SMS is in flight

    began = time.monotonic()
    await client.close()

    assert len(twilio.messages_to(PHONE)) == 1, "the SMS in flight was cut short"
    assert time.monotonic() - began < 2.0
