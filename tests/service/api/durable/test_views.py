"""The lab's commands through HTTP, one test per status and behaviour, checked against v1's view."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.api.durable.views import _code
from service.errors import BadRequest, Unprocessable
from tests.support.api import API_KEY, AUTH, MakeClient, MakeSettings, wrong
from tests.support.database import database
from tests.support.durable import (
    CODE,
    PHONE,
    START,
    WEBHOOK,
    raise_code,
    relative,
    start,
    status,
    until_decided,
)
from tests.support.twilio import TwilioServer

SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.mark.parametrize(
    "path",
    [
        START,
        "/orchestrators/E4_SmsPhoneVerification",
        f"{WEBHOOK}/orchestrators/E4_SmsPhoneVerification",
        "/api/orchestrators/e4_smsphoneverification",
    ],
)
async def test_start_answers_the_platforms_check_status_response(client: Any, path: str) -> None:
    r = await client.post(path, json=PHONE, params=CODE)

    assert r.status == 202, await r.text()
    body = await r.json()
    assert r.headers["Location"] == body["statusQueryGetUri"]
    assert r.headers["Retry-After"] == "10"
    instance = f"http://{r.url.host}:{r.url.port}{WEBHOOK}/instances/{body['id']}"
    query = f"taskHub=DurableFunctionsHub&connection=Storage&code={API_KEY}"
    assert body == {
        "id": body["id"],
        "statusQueryGetUri": f"{instance}?{query}",
        "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{instance}?{query}",
        "restartPostUri": f"{instance}/restart?{query}",
        "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
    }
    # The instance is the verification, as v1 sees it with the same key.
    v = await (await client.get(f"/verifications/{body['id']}", headers=AUTH)).json()
    assert (v["status"], v["to"]) == ("pending", PHONE)


async def test_the_lab_sequence_approves(client: Any, twilio: TwilioServer) -> None:
    links = await start(client)
    code = (await twilio.wait_for_message(PHONE)).code
    assert code is not None

    running, body = await status(client, links)
    assert running == 202
    assert body["runtimeStatus"] == "Running" and body["output"] is None

    # As the lab sends it: the code as a JSON number.
    r = await raise_code(client, links, int(code))
    assert r.status == 202, await r.text()
    assert await r.read() == b""

    done, body = await status(client, links)
    assert done == 200
    assert body == {
        "name": "E4_SmsPhoneVerification",
        "instanceId": links["id"],
        "runtimeStatus": "Completed",
        "input": PHONE,
        "customStatus": None,
        "output": True,
        "createdTime": body["createdTime"],
        "lastUpdatedTime": body["lastUpdatedTime"],
    }
    assert SECONDS.match(body["createdTime"]) and SECONDS.match(body["lastUpdatedTime"])
    assert body["lastUpdatedTime"] >= body["createdTime"]


async def test_a_running_status_is_202_with_location_and_retry_after(client: Any) -> None:
    links = await start(client)
    r = await client.get(relative(links["statusQueryGetUri"]))
    assert r.status == 202
    assert r.headers["Location"] == links["statusQueryGetUri"]
    assert r.headers["Retry-After"] == "5"


async def test_the_code_as_a_string_works_too(client: Any, twilio: TwilioServer) -> None:
    links = await start(client)
    code = (await twilio.wait_for_message(PHONE)).code
    assert (await raise_code(client, links, code)).status == 202
    assert (await until_decided(client, links))["output"] is True


def test_a_number_is_padded_to_the_code_length() -> None:
    assert _code(1185, 6) == "001185"
    assert _code(0, 4) == "0000"
    assert _code("012345", 6) == "012345"
    for refused in (1234567, -1, "1185"):
        with pytest.raises(Unprocessable):
            _code(refused, 6)
    for not_a_code in (True, 11.5, None, [1]):
        with pytest.raises(BadRequest):
            _code(not_a_code, 6)


async def test_a_wrong_code_is_accepted_and_the_last_one_completes_false(
    client: Any, twilio: TwilioServer
) -> None:
    links = await start(client)
    code = (await twilio.wait_for_message(PHONE)).code
    assert code is not None

    for _ in range(3):  # max_attempts
        r = await raise_code(client, links, wrong(code))
        assert r.status == 202, await r.text()

    body = await until_decided(client, links)
    assert (body["runtimeStatus"], body["output"]) == ("Completed", False)
    # Finished: the right code is now 410, as raising an event to a completed instance is.
    assert (await raise_code(client, links, code)).status == 410


async def test_an_expired_instance_completes_false(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verification={"ttl_seconds": 0.3})
    links = await start(client)
    body = await until_decided(client, links)
    assert (body["runtimeStatus"], body["output"]) == ("Completed", False)


async def test_raise_event_for_an_unknown_instance_is_404(client: Any) -> None:
    url = f"{WEBHOOK}/instances/VEnope/raiseEvent/SmsChallengeResponse"
    r = await client.post(url, json=123456, params=CODE)
    assert r.status == 404


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        ("123456", {"Content-Type": "text/plain"}),
        ("{not json", {"Content-Type": "application/json"}),
        ('"12"', {"Content-Type": "application/json"}),
        ("true", {"Content-Type": "application/json"}),
        ('{"code": "123456"}', {"Content-Type": "application/json"}),
    ],
)
async def test_raise_event_that_is_not_a_code_is_400_and_spends_nothing(
    client: Any, data: str, headers: dict[str, str]
) -> None:
    links = await start(client)
    url = relative(links["sendEventPostUri"], eventName="SmsChallengeResponse")
    r = await client.post(url, data=data, headers=headers)
    assert r.status == 400, await r.text()
    assert (await r.json())["Message"]
    v = await (await client.get(f"/verifications/{links['id']}", headers=AUTH)).json()
    assert (v["status"], v["attempts_left"]) == ("pending", 3)


async def test_an_event_nobody_waits_for_is_accepted_and_ignored(
    client: Any, twilio: TwilioServer
) -> None:
    links = await start(client)
    code = (await twilio.wait_for_message(PHONE)).code
    url = relative(links["sendEventPostUri"], eventName="SomethingElse")
    r = await client.post(url, json=code)
    assert r.status == 202, await r.text()
    v = await (await client.get(f"/verifications/{links['id']}", headers=AUTH)).json()
    assert (v["status"], v["attempts_left"]) == ("pending", 3)


async def test_terminate_cancels_then_is_410(client: Any) -> None:
    links = await start(client)
    url = relative(links["terminatePostUri"], text="changed my mind")

    r = await client.post(url)
    assert r.status == 202, await r.text()
    code, body = await status(client, links)
    assert (code, body["runtimeStatus"], body["output"]) == (200, "Terminated", None)
    v = await (await client.get(f"/verifications/{links['id']}", headers=AUTH)).json()
    assert v["status"] == "canceled"

    assert (await client.post(url)).status == 410
    assert (await client.post(f"{WEBHOOK}/instances/VEnope/terminate", params=CODE)).status == 404


async def test_status_of_an_unknown_instance_is_404(client: Any) -> None:
    r = await client.get(f"{WEBHOOK}/instances/VEnope", params=CODE)
    assert r.status == 404
    assert "VEnope" in (await r.json())["Message"]


async def test_show_input_false_leaves_input_null(client: Any) -> None:
    links = await start(client)
    r = await client.get(relative(links["statusQueryGetUri"]), params={"showInput": "False"})
    assert (await r.json())["input"] is None


async def test_a_failed_sms_is_failed_and_500_on_request(client: Any, twilio: TwilioServer) -> None:
    links = await start(client, "+15005550001")  # Twilio refuses this number for good
    body = await until_decided(client, links)
    assert body["runtimeStatus"] == "Failed"
    assert isinstance(body["output"], str) and body["output"]

    url = relative(links["statusQueryGetUri"])
    r = await client.get(url, params={"returnInternalServerErrorOnFailure": "true"})
    assert r.status == 500
    assert (await r.json())["runtimeStatus"] == "Failed"


async def test_purge_is_412_while_running_and_501_once_finished(client: Any) -> None:
    links = await start(client)
    url = relative(links["purgeHistoryDeleteUri"])

    r = await client.delete(url)
    assert r.status == 412, await r.text()
    await client.post(relative(links["terminatePostUri"], text="x"))
    r = await client.delete(url)
    assert r.status == 501, await r.text()
    assert "keep_finished_seconds" in (await r.json())["Message"]
    assert (await client.delete(f"{WEBHOOK}/instances/VEnope", params=CODE)).status == 404


@pytest.mark.parametrize("operation", ["suspend", "resume"])
async def test_suspend_and_resume_are_501_then_410(client: Any, operation: str) -> None:
    links = await start(client)
    url = relative(links[f"{operation}PostUri"], text="x")

    r = await client.post(url)
    assert r.status == 501, await r.text()
    assert (await r.json())["Message"]
    await client.post(relative(links["terminatePostUri"], text="x"))
    assert (await client.post(url)).status == 410
    unknown = await client.post(f"{WEBHOOK}/instances/VEnope/{operation}", params=CODE)
    assert unknown.status == 404


async def test_rewind_and_the_instance_lists_are_501(client: Any) -> None:
    links = await start(client)
    rewind = await client.post(f"{WEBHOOK}/instances/{links['id']}/rewind", params=CODE)
    assert rewind.status == 501
    assert (await client.get(f"{WEBHOOK}/instances", params=CODE)).status == 501
    assert (await client.delete(f"{WEBHOOK}/instances", params=CODE)).status == 501


async def test_restart_starts_a_new_verification_for_the_number(
    client: Any, twilio: TwilioServer
) -> None:
    links = await start(client)
    await twilio.wait_for_message(PHONE)
    await client.post(relative(links["terminatePostUri"], text="x"))

    r = await client.post(relative(links["restartPostUri"]))
    assert r.status == 202, await r.text()
    again = await r.json()
    assert again["id"] != links["id"]
    assert r.headers["Location"] == again["statusQueryGetUri"]
    code = (await twilio.wait_for_message(PHONE)).code
    assert (await raise_code(client, again, code)).status == 202
    assert (await until_decided(client, again))["output"] is True

    same = await client.post(
        relative(links["restartPostUri"]), params={"restartWithNewInstanceId": "false"}
    )
    assert same.status == 501


async def test_restart_of_a_masked_number_is_410(
    make_settings: MakeSettings, make_client: MakeClient
) -> None:
    settings = make_settings()
    client = await make_client(settings)
    links = await start(client)
    await client.post(relative(links["terminatePostUri"], text="x"))
    with database(settings.database.path) as db:  # as retention masks it
        db.execute("UPDATE verifications SET phone = '+14*****00'")

    r = await client.post(relative(links["restartPostUri"]))
    assert r.status == 410, await r.text()


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/api/orchestrators/E1_HelloSequence", '"+14155550100"'),
        (START, ""),
        (START, '"+14155550100'),
        (START, '{"phone": "+14155550100"}'),
        (START, '"+1 415 CALL ME"'),
        (START, '"14155550100"'),
    ],
)
async def test_a_bad_start_is_400_and_sends_nothing(
    client: Any, twilio: TwilioServer, path: str, data: str
) -> None:
    r = await client.post(
        path, data=data, params=CODE, headers={"Content-Type": "application/json"}
    )
    assert r.status == 400, await r.text()
    assert (await r.json())["Message"]
    assert twilio.attempts == 0


async def test_a_start_too_large_is_413(client: Any) -> None:
    r = await client.post(START, data='"' + "1" * 20_000 + '"', params=CODE)
    assert r.status == 413


async def test_a_chosen_instance_id_starts_one_verification(
    client: Any, twilio: TwilioServer
) -> None:
    path = f"{START}/my-instance-1"
    first = await start(client, path=path)
    second = await start(client, path=path)
    assert first["id"] == second["id"]
    await twilio.wait_for_message(PHONE)
    assert len(twilio.messages_to(PHONE)) == 1

    r = await client.post(path, json="+14155550199", params=CODE)
    assert r.status == 400, await r.text()


async def test_task_hub_and_connection_are_echoed(client: Any) -> None:
    links = await start(client, taskHub="MyHub", connection="MyStorage")
    assert "?taskHub=MyHub&connection=MyStorage&code=" in links["statusQueryGetUri"]


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({}, {}),
        ({"code": "wrong"}, {}),
        ({}, {"x-functions-key": "wrong"}),
        ({}, {"Authorization": "Bearer wrong"}),
    ],
)
async def test_no_key_or_a_wrong_one_is_401(
    client: Any, twilio: TwilioServer, params: dict[str, str], headers: dict[str, str]
) -> None:
    r = await client.post(START, json=PHONE, params=params, headers=headers)
    assert r.status == 401, await r.text()
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await r.json())["Message"]
    assert twilio.attempts == 0


@pytest.mark.parametrize(
    ("params", "headers"),
    [({}, {"x-functions-key": API_KEY}), ({}, AUTH), ({"code": API_KEY}, {})],
)
async def test_the_key_as_functions_takes_it_or_as_v1_does(
    client: Any, params: dict[str, str], headers: dict[str, str]
) -> None:
    r = await client.post(START, json=PHONE, params=params, headers=headers)
    assert r.status == 202, await r.text()
    assert f"&code={API_KEY}" in (await r.json())["statusQueryGetUri"]


async def test_another_keys_instance_is_404(make_client: MakeClient) -> None:
    client = await make_client(auth={"api_keys": [API_KEY, "other-app-key-9876543210"]})
    links = await start(client)
    url = relative(links["statusQueryGetUri"]).replace(API_KEY, "other-app-key-9876543210")
    assert (await client.get(url)).status == 404


async def test_with_auth_off_any_key_works_and_none_is_written(make_client: MakeClient) -> None:
    client = await make_client(auth={"api_keys": [], "allow_unauthenticated": True})
    r = await client.post(START, json=PHONE)
    assert r.status == 202, await r.text()
    links = await r.json()
    assert links["statusQueryGetUri"].endswith("?taskHub=DurableFunctionsHub&connection=Storage")
    code, _ = await status(client, links)
    assert code == 202
    r = await client.get(f"{WEBHOOK}/instances/{links['id']}", params={"code": "anything"})
    assert r.status == 202
