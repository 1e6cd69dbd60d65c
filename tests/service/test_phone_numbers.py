"""Phone numbers are taken as people paste them, and kept in one form, E.164."""

from __future__ import annotations

import pytest

from tests.support.api import AUTH, MakeClient, start
from tests.support.twilio import TwilioServer

#: A canonical number, then spellings of the same handset: punctuation, and the national trunk
#: prefix written after the country code (phonenumbers drops it: checked against 9.0.43).
SPELLINGS = [
    ("+14155550100", ["+114155550100", "+1 1 415 555 0100"]),
    ("+4915112345678", ["+49015112345678", "+49 0 151 1234 5678"]),
    ("+447400123456", ["+4407400123456", "+44 (0) 7400 123456"]),
]


@pytest.mark.parametrize(("plain", "others"), SPELLINGS)
async def test_trunk_prefixed_spellings_are_the_same_number(
    make_client: MakeClient, twilio: TwilioServer, plain: str, others: list[str]
) -> None:
    client = await make_client()
    first = await start(client, plain)
    assert first["to"] == plain

    for other in others:
        # A second start for a pending number resends it: the same verification answers.
        again = await start(client, other)
        assert (again["id"], again["to"]) == (first["id"], plain)

    for _ in range(1 + len(others)):
        await twilio.wait_for_message(plain)
    assert {m.to for m in twilio.messages} == {plain}


async def test_every_spelling_counts_against_one_per_number_limit(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(limits={"sms_per_phone": 5})
    pasted = ["+1 (415) 555-0100", "+1.415.555.0100", "+1-415-555-0100", "+1 1 415 555 0100"]
    ids = {(await start(client, phone))["id"] for phone in ["+14155550100", *pasted]}
    assert len(ids) == 1

    r = await client.post("/verifications", json={"phone": "+114155550100"}, headers=AUTH)

    assert r.status == 429, await r.text()
    assert (await r.json())["error"]["code"] == "rate_limited_phone"


@pytest.mark.parametrize(
    "phone",
    [
        "14155550100",  # no `+`: the region would have to be guessed
        "+1 415 555 0100 ext. 5",
        "+1 415 CALL ME",
        "+\uff11\uff14\uff11\uff15\uff15\uff15\uff10\uff11\uff10\uff10",  # full-width digits
        "tel:+14155550100",
        "+1 415 555 010",
    ],
)
async def test_other_spellings_are_refused(
    make_client: MakeClient, twilio: TwilioServer, phone: str
) -> None:
    client = await make_client()
    r = await client.post("/verifications", json={"phone": phone}, headers=AUTH)
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["code"] == "invalid_phone"
    assert twilio.attempts == 0
