"""Tenancy: a verification belongs to the API key that started it; other keys cannot see it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import API_KEY, AUTH, MakeClient
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"
OTHER_KEY = "other-app-key-9876543210"
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture
async def client(make_client: MakeClient) -> Any:
    return await make_client(auth={"api_keys": [API_KEY, OTHER_KEY]})


async def test_another_key_gets_404_on_get_code_and_cancel(
    client: Any, twilio: TwilioServer
) -> None:
    r = await client.post("/verifications", json={"phone": PHONE}, headers=AUTH)
    view = await r.json()
    code = (await twilio.wait_for_message(PHONE)).code
    url = f"/verifications/{view['id']}"

    answers = [
        await client.get(url, headers=OTHER),
        await client.post(f"{url}/code", json={"code": code}, headers=OTHER),
        await client.delete(url, headers=OTHER),
    ]

    assert [a.status for a in answers] == [404, 404, 404]
    assert {(await a.json())["error"]["code"] for a in answers} == {"not_found"}
    r = await client.post(f"{url}/code", json={"code": code}, headers=AUTH)
    assert (r.status, (await r.json())["status"]) == (200, "approved")
    # Final, and still nobody else's.
    assert (await client.get(url, headers=OTHER)).status == 404


async def test_another_key_starting_for_the_same_number_gets_its_own_verification(
    client: Any, twilio: TwilioServer
) -> None:
    r = await client.post(
        "/verifications", json={"phone": PHONE, "reference": "app-a"}, headers=AUTH
    )
    first = await r.json()
    first_code = (await twilio.wait_for_message(PHONE)).code

    r = await client.post(
        "/verifications", json={"phone": PHONE, "reference": "app-b"}, headers=OTHER
    )
    assert r.status == 202, await r.text()
    second = await r.json()
    second_code = (await twilio.wait_for_message(PHONE)).code

    assert second["id"] != first["id"]
    assert second["reference"] == "app-b"
    assert second_code != first_code, "the second app must not be sent the first app's code"
    # The same idempotency key under two API keys is two keys.
    key = {"Idempotency-Key": "signup-1"}
    a = await client.post("/verifications", json={"phone": "+14155550199"}, headers=AUTH | key)
    b = await client.post("/verifications", json={"phone": "+14155550199"}, headers=OTHER | key)
    assert (await a.json())["id"] != (await b.json())["id"]
