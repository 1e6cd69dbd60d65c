"""The SMS senders, through the real twilio SDK and real HTTP to our fake Twilio.

The `twilio` fixture (conftest) is a running `tests.support.twilio.TwilioServer`.
"""

from __future__ import annotations

import base64
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service.config import Secret, SmsSettings
from service.errors import ConfigError, SmsRejected, SmsUnavailable
from service.sms.base import create_sender
from service.sms.console import ConsoleSender
from service.sms.twilio import TwilioSender
from tests.support.twilio import MAGIC_NUMBERS, TwilioServer

TO = "+14155550123"
FROM = "+15005550006"
SERVICE_SID = "MG" + "1" * 32
BASIC_AUTH = {"Authorization": "Basic " + base64.b64encode(b"AC1:t").decode()}


def settings_for(twilio: TwilioServer, **changes: Any) -> SmsSettings:
    settings = SmsSettings(
        sender="twilio",
        account_sid=twilio.account_sid,
        auth_token=Secret(twilio.auth_token),
        from_number=FROM,
        api_base_url=twilio.base_url,
        timeout_seconds=2.0,
        retry_delays=(0.01, 0.02),
    )
    return dataclasses.replace(settings, **changes)


@pytest.fixture
async def sender(twilio: TwilioServer) -> AsyncIterator[TwilioSender]:
    sender = TwilioSender(settings_for(twilio))
    yield sender
    await sender.close()


async def test_message_is_delivered_with_from_to_and_body(
    twilio: TwilioServer, sender: TwilioSender
) -> None:
    sid = await sender.send(TO, "Your verification code is 123456.")

    message = await twilio.wait_for_message(TO)
    assert (message.sid, message.account_sid) == (sid, twilio.account_sid)
    assert (message.from_, message.to, message.body) == (
        FROM,
        TO,
        "Your verification code is 123456.",
    )
    assert message.messaging_service_sid == ""
    assert sid.startswith("SM") and len(sid) == 34
    assert twilio.code_for(TO) == "123456"


async def test_twilio_region_in_the_environment_does_not_move_the_endpoint(
    twilio: TwilioServer, sender: TwilioSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")

    await sender.send(TO, "code 123456")

    assert twilio.code_for(TO) == "123456"


async def test_messaging_service_sid_wins_over_from_number(twilio: TwilioServer) -> None:
    sender = TwilioSender(settings_for(twilio, messaging_service_sid=SERVICE_SID))
    try:
        await sender.send(TO, "code 4321")
    finally:
        await sender.close()

    message = await twilio.wait_for_message(TO)
    assert (message.messaging_service_sid, message.from_) == (SERVICE_SID, "")


@pytest.mark.parametrize(("number", "code"), [(n, c) for n, (c, _) in MAGIC_NUMBERS.items()])
async def test_magic_numbers_are_rejected_with_twilios_code(
    twilio: TwilioServer, sender: TwilioSender, number: str, code: int
) -> None:
    with pytest.raises(SmsRejected) as caught:
        await sender.send(number, "code 123456")

    assert caught.value.reason.startswith(f"twilio {code}: ")
    assert number not in caught.value.reason and twilio.auth_token not in caught.value.reason
    assert twilio.messages == []


async def test_error_500_is_unavailable(twilio: TwilioServer, sender: TwilioSender) -> None:
    twilio.set_faults("error500")

    with pytest.raises(SmsUnavailable, match="twilio 20500: Internal Server Error"):
        await sender.send(TO, "code 123456")


async def test_hang_is_unavailable_after_the_timeout(twilio: TwilioServer) -> None:
    twilio.set_faults("hang", count=1)
    sender = TwilioSender(settings_for(twilio, timeout_seconds=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(SmsUnavailable, match=r"did not answer within 0\.5 s"):
            await sender.send(TO, "code 123456")
        assert 0.4 < time.monotonic() - started < 2

        # The session survives a time-out.
        await sender.send(TO, "code 123456")
    finally:
        await sender.close()
    assert len(twilio.messages) == 1


async def test_refused_connection_is_unavailable(twilio: TwilioServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    sender = TwilioSender(settings_for(twilio, api_base_url=f"http://127.0.0.1:{closed_port}"))
    try:
        with pytest.raises(SmsUnavailable, match="twilio unreachable: ClientConnectorError"):
            await sender.send(TO, "code 123456")
    finally:
        await sender.close()


async def test_console_sender_prints(capsys: pytest.CaptureFixture[str]) -> None:
    sid = await ConsoleSender().send(TO, "Your code is 123456.")

    assert capsys.readouterr().out == f"SMS to {TO}: Your code is 123456.\n"
    assert sid.startswith("console-")


async def test_create_sender_sends_through_twilio(twilio: TwilioServer) -> None:
    sender = create_sender(settings_for(twilio, sender="auto"), has_api_keys=True)
    try:
        await sender.send(TO, "code 123456")
    finally:
        await sender.close()

    assert isinstance(sender, TwilioSender)
    assert twilio.code_for(TO) == "123456"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sender": "auto"}, ConsoleSender),
        ({"sender": "auto", "account_sid": "AC1", "auth_token": Secret("t")}, TwilioSender),
        ({"sender": "console", "account_sid": "AC1", "auth_token": Secret("t")}, ConsoleSender),
        ({"sender": "twilio", "account_sid": "AC1", "auth_token": Secret("t")}, TwilioSender),
    ],
)
async def test_create_sender_chooses(changes: dict[str, Any], expected: type) -> None:
    settings = dataclasses.replace(SmsSettings(from_number=FROM), **changes)
    sender = create_sender(settings, has_api_keys=False)
    await sender.close()

    assert isinstance(sender, expected)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sender": "twilio"}, "'sms.account_sid'"),
        ({"sender": "twilio", "account_sid": "AC1"}, "'sms.auth_token'"),
        ({"sender": "auto", "account_sid": "AC1"}, "'sms.auth_token'"),
        ({"sender": "auto", "auth_token": Secret("t")}, "'sms.account_sid'"),
        (
            {
                "sender": "twilio",
                "account_sid": "AC1",
                "auth_token": Secret("t"),
                "from_number": "",
            },
            "'sms.from_number' or 'sms.messaging_service_sid'",
        ),
    ],
)
def test_create_sender_refuses_incomplete_config(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        create_sender(
            dataclasses.replace(SmsSettings(from_number=FROM), **changes), has_api_keys=False
        )


async def test_fake_twilio_speaks_twilio_and_takes_orders_over_http(twilio: TwilioServer) -> None:
    url = f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    form = {"To": TO, "From": FROM, "Body": "code 98765"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form) as r:
            assert r.status == 401, await r.text()
            assert (await r.json())["code"] == 20003

        async with http.post(f"{twilio.base_url}/_test/faults", json={"mode": "error500"}) as r:
            assert r.status == 200, await r.text()
        async with http.post(url, data=form, headers=BASIC_AUTH) as r:
            assert r.status == 500, await r.text()
        twilio.set_faults("none")

        async with http.post(url, data=form, headers=BASIC_AUTH) as r:
            assert r.status == 201, await r.text()
        async with http.get(f"{twilio.base_url}/_test/messages", params={"to": TO}) as r:
            [recorded] = await r.json()
        assert (recorded["to"], recorded["code"]) == (TO, "98765")

        async with http.delete(f"{twilio.base_url}/_test/messages") as r:
            assert r.status == 204, await r.text()
    assert twilio.messages == []
