"""Where SMS may go: countries by calling code or region, and only number types that take SMS."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from tests.support.api import API_KEY, AUTH, MakeClient
from tests.support.metrics import scrape, value
from tests.support.process import run_to_exit
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"


def example(region: str, kind: int) -> str:
    """phonenumbers' own example of `kind` in `region`: valid by construction, of that type."""
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None, (region, kind)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


async def post(client: Any, phone: str) -> tuple[int, dict[str, Any]]:
    r = await client.post("/verifications", json={"phone": phone}, headers=AUTH)
    return r.status, await r.json()


async def test_regions_narrow_a_shared_calling_code(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(limits={"allowed_country_codes": ["US", "ca"]})
    jamaica = example("JM", PhoneNumberType.MOBILE)  # +1 876: Jamaica, not the US
    canada = example("CA", PhoneNumberType.FIXED_LINE_OR_MOBILE)

    status, body = await post(client, jamaica)

    assert status == 422, body
    assert body["error"]["code"] == "country_not_allowed"
    assert "JM" in body["error"]["message"]
    assert [(await post(client, phone))[0] for phone in (PHONE, canada)] == [202, 202]
    await twilio.wait_for_message(PHONE)
    await twilio.wait_for_message(canada)
    assert twilio.messages_to(jamaica) == []
    assert value(await scrape(client), "verification_starts_refused_total",
                 reason="country_not_allowed") == 1  # fmt: skip


async def test_calling_codes_and_regions_mix(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client(limits={"allowed_country_codes": ["+44", "DE"]})
    assert (await post(client, example("GB", PhoneNumberType.MOBILE)))[0] == 202
    assert (await post(client, "+4915112345678"))[0] == 202
    status, body = await post(client, PHONE)
    assert (status, body["error"]["code"]) == (422, "country_not_allowed")


async def test_a_shared_calling_code_is_warned_of_at_start(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.destinations"):
        await make_client(limits={"allowed_country_codes": ["1", "49"]})
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.destinations"]
    assert len(warnings) == 1, warnings  # +49 is Germany's alone
    assert "+1" in warnings[0] and "JM" in warnings[0] and "US" in warnings[0]


@pytest.mark.parametrize(
    ("region", "kind"),
    [
        ("US", PhoneNumberType.PREMIUM_RATE),
        ("GB", PhoneNumberType.PREMIUM_RATE),
        ("FR", PhoneNumberType.PREMIUM_RATE),
        ("US", PhoneNumberType.TOLL_FREE),
        ("GB", PhoneNumberType.UAN),
        ("GB", PhoneNumberType.FIXED_LINE),
        ("ES", PhoneNumberType.SHARED_COST),
    ],
)
async def test_numbers_that_take_no_sms_are_refused_by_default(
    make_client: MakeClient, twilio: TwilioServer, region: str, kind: int
) -> None:
    client = await make_client()
    phone = example(region, kind)

    status, body = await post(client, phone)

    assert status == 422, body
    assert body["error"]["code"] == "number_type_not_allowed"
    assert twilio.attempts == 0
    assert value(await scrape(client), "verification_starts_refused_total",
                 reason="number_type_not_allowed") == 1  # fmt: skip


async def test_the_tests_numbers_pass_the_default(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client()
    # +1 415 555: fixed line or mobile; +1 500 555: Twilio's test numbers, personal numbers.
    phones = [PHONE, "+12125550100", "+15005550006", "+4915112345678"]
    phones += [example("GB", PhoneNumberType.MOBILE), example("GB", PhoneNumberType.VOIP)]
    assert [(await post(client, phone))[0] for phone in phones] == [202] * len(phones)


async def test_number_types_are_configurable(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    only_mobiles = await make_client(limits={"allowed_number_types": ["mobile"]})
    status, body = await post(only_mobiles, PHONE)  # the US does not tell mobiles apart
    assert (status, body["error"]["code"]) == (422, "number_type_not_allowed")
    assert (await post(only_mobiles, example("GB", PhoneNumberType.MOBILE)))[0] == 202

    # A database of its own: one app at a time holds a database.
    database = {"path": str(tmp_path / "every-type.db"), "url": ""}  # SQLite, whatever the run
    every_type = await make_client(database=database, limits={"allowed_number_types": []})
    assert (await post(every_type, example("GB", PhoneNumberType.PREMIUM_RATE)))[0] == 202


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "raw", "named"),
    [
        (
            "VERIFY_LIMITS_ALLOWED_NUMBER_TYPES",
            "mobile,premium",
            "'limits.allowed_number_types' has 'premium', which is not a number type",
        ),
        (
            "VERIFY_LIMITS_ALLOWED_COUNTRY_CODES",
            "US,UK",
            "'limits.allowed_country_codes' has 'UK', which is neither a calling code",
        ),
    ],
)
def test_unknown_names_stop_the_service(tmp_path: Path, setting: str, raw: str, named: str) -> None:
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_SERVER_PORT": "1",  # never reached: binding it would fail
        setting: raw,
    }
    done = run_to_exit(env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr and named in done.stderr, done.stderr
    assert not (tmp_path / "verifications.db").exists(), "nothing is created"
