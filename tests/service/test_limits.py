"""SMS-pumping defences: per-number, per-key and global limits, and the country allow-list."""

from __future__ import annotations

from tests.support.api import AUTH, MakeClient
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


async def post(client: object, phone: str) -> tuple[int, dict[str, str], dict[str, object]]:
    r = await client.post("/verifications", json={"phone": phone}, headers=AUTH)  # type: ignore[attr-defined]
    return r.status, dict(r.headers), await r.json()


async def test_five_sms_per_number_then_429(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client()
    answers = [await post(client, PHONE) for _ in range(5)]
    assert [status for status, _, _ in answers] == [202] * 5
    assert len({body["id"] for _, _, body in answers}) == 1  # the same verification, resent
    for _ in range(5):
        await twilio.wait_for_message(PHONE)

    status, headers, body = await post(client, PHONE)

    assert status == 429
    assert body["error"]["code"] == "rate_limited_phone"  # type: ignore[index]
    assert 1 <= int(headers["Retry-After"]) <= 600
    assert len(twilio.messages_to(PHONE)) == 5
    assert twilio.attempts == 5


async def test_starts_per_key(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client(limits={"starts_per_key_per_minute": 3})
    statuses = [(await post(client, f"+1415555{i:04d}"))[0] for i in range(100, 104)]
    assert statuses == [202, 202, 202, 429]


async def test_global_sms_budget(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client(limits={"sms_per_minute": 2})
    answers = [await post(client, f"+1415555{i:04d}") for i in range(100, 103)]
    assert [a[0] for a in answers] == [202, 202, 429]
    assert answers[2][2]["error"]["code"] == "sms_budget"  # type: ignore[index]


async def test_country_allow_list(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client(limits={"allowed_country_codes": ["1"]})
    status, _, body = await post(client, "+4915112345678")
    assert status == 422
    assert body["error"]["code"] == "country_not_allowed"  # type: ignore[index]
    assert (await post(client, PHONE))[0] == 202
    await twilio.wait_for_message(PHONE)
    assert twilio.attempts == 1
