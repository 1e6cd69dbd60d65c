"""The Twilio Verify v2 surface through the official twilio SDK; each answer checked by the spec.

Only `client.verify.base_url` is changed; everything else is the SDK as apps use it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]

from tests.support.api import API_KEY, AUTH, MakeClient, start, wrong
from tests.support.database import database
from tests.support.twilio import TwilioServer
from tests.support.verify_v2 import ACCOUNT_SID, SERVICE_SID, Sdk

TO = "+14155550100"


async def sdk_for(make_client: MakeClient, password: str = API_KEY, **sections: Any) -> Sdk:
    client = await make_client(**sections)
    return Sdk(str(client.make_url("")).rstrip("/"), password)


@pytest.fixture
async def sdk(make_client: MakeClient) -> Sdk:
    return await sdk_for(make_client)


async def refused(sdk: Sdk, call: Any) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as caught:
        await sdk(call)
    return caught.value


async def test_the_whole_flow(sdk: Sdk, twilio: TwilioServer) -> None:
    verifications = sdk.service.verifications
    first = await sdk(lambda: verifications.create(to=TO, channel="sms"))
    assert (first.status, first.valid, first.channel, first.to) == ("pending", False, "sms", TO)
    assert first.service_sid == SERVICE_SID and first.account_sid == ACCOUNT_SID
    assert first.url.startswith("http://127.0.0.1:") and first.url.endswith(f"/{first.sid}")
    assert first.date_created.tzinfo is not None  # the SDK parsed it: a datetime, not a str
    code = (await twilio.wait_for_message(TO)).code
    assert code is not None

    # A create for the pending number sends the same code again, and lists the send.
    again = await sdk(lambda: verifications.create(to=TO, channel="sms"))
    assert again.sid == first.sid
    assert len(again.send_code_attempts) == 2
    assert (await twilio.wait_for_message(TO)).code == code

    by_sid = await sdk(lambda: verifications(first.sid).fetch())
    by_number = await sdk(lambda: verifications(TO).fetch())
    assert by_sid.sid == by_number.sid == first.sid
    assert len(by_number.send_code_attempts) == 2

    check = sdk.service.verification_checks
    missed = await sdk(lambda: check.create(to=TO, code=wrong(code)))
    assert (missed.status, missed.valid) == ("pending", False)
    approved = await sdk(lambda: check.create(verification_sid=first.sid, code=code))
    assert (approved.status, approved.valid, approved.sid) == ("approved", True, first.sid)

    # Finished, it is gone on this surface, by SID and by number.
    for name in (first.sid, TO):
        error = await refused(sdk, lambda name=name: verifications(name).fetch())
        assert (error.status, error.code) == (404, 20404)
    error = await refused(sdk, lambda: check.create(to=TO, code=code))
    assert (error.status, error.code) == (404, 20404)
    # Every answer was checked against the spec, under the operation it answered.
    assert sum(sdk.spec.checked.values()) == len(sdk.http.answers) == 9
    assert "POST /v2/Services/{ServiceSid}/VerificationCheck 200" in sdk.spec.checked


async def test_cancel_and_approve_by_update(sdk: Sdk, twilio: TwilioServer) -> None:
    verifications = sdk.service.verifications
    v = await sdk(lambda: verifications.create(to=TO, channel="sms"))
    canceled = await sdk(lambda: verifications(v.sid).update(status="canceled"))
    assert (canceled.status, canceled.valid) == ("canceled", False)
    error = await refused(sdk, lambda: verifications(v.sid).update(status="canceled"))
    assert (error.status, error.code) == (404, 20404)

    other = await sdk(lambda: verifications.create(to=TO, channel="sms"))
    assert other.sid != v.sid
    approved = await sdk(lambda: verifications(TO).update(status="approved"))
    assert (approved.sid, approved.status, approved.valid) == (other.sid, "approved", True)


async def test_approving_by_update_spends_no_attempt(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    client = await make_client()
    sdk = Sdk(str(client.make_url("")).rstrip("/"), API_KEY)
    v = await sdk(lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    await sdk(lambda: sdk.service.verifications(v.sid).update(status="approved"))
    r = await client.get(f"/verifications/{v.sid}", headers=AUTH)
    assert (await r.json())["status"] == "approved"
    # The outcome published says no code was tried.
    with database(tmp_path / "verifications.db") as db:
        (body,) = db.execute(
            "SELECT body FROM outbox WHERE verification_id = ?", (v.sid,)
        ).fetchone()
    assert (json.loads(body)["status"], json.loads(body)["attempts"]) == ("approved", 0)


async def test_resends_are_listed_after_a_restart(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    first = await make_client()
    sdk = Sdk(str(first.make_url("")).rstrip("/"), API_KEY)
    for _ in range(3):
        v = await sdk(lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    assert len(v.send_code_attempts) == 3
    await first.close()
    again = await make_client()
    sdk = Sdk(str(again.make_url("")).rstrip("/"), API_KEY)
    fetched = await sdk(lambda: sdk.service.verifications(TO).fetch())
    assert fetched.sid == v.sid
    assert fetched.send_code_attempts == v.send_code_attempts


async def test_too_many_checks_is_429_60202(make_client: MakeClient, twilio: TwilioServer) -> None:
    sdk = await sdk_for(make_client, verification={"max_attempts": 2})
    v = await sdk(lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    code = (await twilio.wait_for_message(TO)).code
    assert code is not None
    check = sdk.service.verification_checks
    first = await sdk(lambda: check.create(to=TO, code=wrong(code)))
    assert (first.status, first.valid) == ("pending", False)
    last = await sdk(lambda: check.create(verification_sid=v.sid, code=wrong(code)))
    assert (last.status, last.valid) == ("max_attempts_reached", False)
    for named in ({"verification_sid": v.sid}, {"to": TO}):
        error = await refused(sdk, lambda named=named: check.create(code=code, **named))
        assert (error.status, error.code) == (429, 60202), named


async def test_too_many_sends_is_429_60203(make_client: MakeClient, twilio: TwilioServer) -> None:
    sdk = await sdk_for(make_client, limits={"sms_per_phone": 2})
    verifications = sdk.service.verifications
    for _ in range(2):
        await sdk(lambda: verifications.create(to=TO, channel="sms"))
        await twilio.wait_for_message(TO)
    error = await refused(sdk, lambda: verifications.create(to=TO, channel="sms"))
    assert (error.status, error.code) == (429, 60203)
    with pytest.raises(TimeoutError):
        await twilio.wait_for_message(TO, timeout=0.2)


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"to": "+1415555010", "channel": "sms"}, 400, 60200),
        ({"to": "not a number", "channel": "sms"}, 400, 60200),
        ({"to": TO, "channel": "call"}, 400, 60223),
        ({"to": TO, "channel": "whatsapp"}, 400, 60223),
        ({"to": TO, "channel": "sms", "custom_code": "1234"}, 400, 60200),
    ],
)
async def test_a_refused_create_sends_nothing(
    sdk: Sdk, twilio: TwilioServer, params: dict[str, str], status: int, code: int
) -> None:
    error = await refused(sdk, lambda: sdk.service.verifications.create(**params))
    assert (error.status, error.code) == (status, code)
    assert twilio.messages == []


async def test_refused_checks(sdk: Sdk, twilio: TwilioServer) -> None:
    check = sdk.service.verification_checks
    error = await refused(sdk, lambda: check.create(code="123456"))
    assert (error.status, error.code) == (400, 60221)
    error = await refused(sdk, lambda: check.create(to="+1415", code="123456"))
    assert (error.status, error.code) == (400, 60200)
    error = await refused(sdk, lambda: check.create(to=TO, code="123"))
    assert (error.status, error.code) == (400, 60200)
    error = await refused(sdk, lambda: check.create(to=TO, code="123456"))
    assert (error.status, error.code) == (404, 20404)
    error = await refused(sdk, lambda: check.create(verification_sid="VE" + "0" * 32, code="1234"))
    assert (error.status, error.code) == (404, 20404)


async def test_a_code_of_another_form_is_a_wrong_code(sdk: Sdk, twilio: TwilioServer) -> None:
    await sdk(lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    missed = await sdk(lambda: sdk.service.verification_checks.create(to=TO, code="abcd"))
    assert (missed.status, missed.valid) == ("pending", False)


async def test_credentials(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client()
    base = str(client.make_url("")).rstrip("/")
    wrong_token = Sdk(base, "not-the-key")
    error = await refused(wrong_token, lambda: wrong_token.service.fetch())
    assert (error.status, error.code) == (401, 20003)
    # An API key's SID and secret: the account shown is the configured one.
    keyed = Sdk(base, API_KEY, username="SK" + "1" * 32)
    v = await keyed(lambda: keyed.service.verifications.create(to=TO, channel="sms"))
    assert v.account_sid == "AC" + "0" * 32


async def test_one_caller_sees_its_v1_verifications(make_client: MakeClient) -> None:
    client = await make_client()
    sdk = Sdk(str(client.make_url("")).rstrip("/"), API_KEY)
    view = await start(client, TO)
    fetched = await sdk(lambda: sdk.service.verifications(TO).fetch())
    assert fetched.sid == view["id"]


async def test_services(sdk: Sdk) -> None:
    service = await sdk(lambda: sdk.service.fetch())
    assert (service.sid, service.code_length) == (SERVICE_SID, 6)
    listed = await sdk(lambda: sdk.client.verify.v2.services.list())
    assert [s.sid for s in listed] == [SERVICE_SID]
    made = await sdk(
        lambda: sdk.client.verify.v2.services.create(friendly_name="Phone verification")
    )
    assert made.sid == SERVICE_SID
    error = await refused(sdk, lambda: sdk.client.verify.v2.services.create(friendly_name="x"))
    assert (error.status, error.code) == (403, 20403)
    error = await refused(sdk, lambda: sdk.client.verify.v2.services("VA" + "1" * 32).fetch())
    assert (error.status, error.code) == (404, 20404)
    other = sdk.client.verify.v2.services("VA" + "1" * 32).verifications
    error = await refused(sdk, lambda: other.create(to=TO, channel="sms"))
    assert (error.status, error.code) == (404, 20404)


SHORT = "VA" + "5" * 32
#: A Service of its own settings, beside the first, whose settings are the service's own.
SHORT_SERVICE = {
    "sid": SHORT,
    "friendly_name": "Short codes",
    "code_length": 4,
    "ttl_seconds": 45,
    "max_attempts": 1,
    "template": "Sign-in code {code}",
}


async def test_a_service_of_its_own_settings(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    sdk = Sdk(str(client.make_url("")).rstrip("/"), API_KEY)
    services = sdk.client.verify.v2.services
    listed = await sdk(lambda: services.list())
    assert [(s.sid, s.code_length) for s in listed] == [(SERVICE_SID, 6), (SHORT, 4)]
    made = await sdk(lambda: services.create(friendly_name="Short codes", code_length=4))
    assert made.sid == SHORT

    v = await sdk(lambda: services(SHORT).verifications.create(to=TO, channel="sms"))
    assert v.service_sid == SHORT and v.url.endswith(f"/Services/{SHORT}/Verifications/{v.sid}")
    message = await twilio.wait_for_message(TO)
    assert message.body.startswith("Sign-in code ") and len(message.code or "") == 4
    native = await (await client.get(f"/verifications/{v.sid}", headers=AUTH)).json()
    assert native["attempts_left"] == 1
    lifetime = datetime.fromisoformat(native["expires_at"]) - datetime.fromisoformat(
        native["created_at"]
    )
    assert lifetime.total_seconds() == 45  # the Service's, not the service's 30

    # The verification is the Service's: the first Service does not see it, nor reach its number.
    for name in (v.sid, TO):
        error = await refused(sdk, lambda name=name: sdk.service.verifications(name).fetch())
        assert (error.status, error.code) == (404, 20404)
    error = await refused(sdk, lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    assert (error.status, error.code) == (409, 20409)
    r = await client.post("/verifications", json={"phone": TO}, headers=AUTH)
    assert r.status == 409, await r.text()

    # One wrong code is all its attempts.
    wrong_code = wrong(message.code or "0000")
    check = services(SHORT).verification_checks
    spent = await sdk(lambda: check.create(to=TO, code=wrong_code))
    assert spent.status == "max_attempts_reached"
    # Then the number is free for the first Service, whose codes are six digits.
    other = await sdk(lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    assert other.service_sid == SERVICE_SID
    assert len((await twilio.wait_for_message(TO)).code or "") == 6


async def test_a_code_keeps_its_length_when_the_service_changes(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    first = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    sdk = Sdk(str(first.make_url("")).rstrip("/"), API_KEY)
    await sdk(
        lambda: sdk.client.verify.v2.services(SHORT).verifications.create(to=TO, channel="sms")
    )
    code = (await twilio.wait_for_message(TO)).code
    await first.close()
    longer = {**SHORT_SERVICE, "code_length": 8}
    again = await make_client(verify_v2={"services": [longer]})
    sdk = Sdk(str(again.make_url("")).rstrip("/"), API_KEY)
    check = sdk.client.verify.v2.services(SHORT).verification_checks
    approved = await sdk(lambda: check.create(to=TO, code=code))
    assert approved.status == "approved"


async def test_metrics_count_each_surface(make_client: MakeClient, twilio: TwilioServer) -> None:
    client = await make_client()
    sdk = Sdk(str(client.make_url("")).rstrip("/"), API_KEY)
    await sdk(lambda: sdk.service.verifications.create(to=TO, channel="sms"))
    await refused(sdk, lambda: sdk.service.verifications("VE" + "0" * 32).fetch())
    await start(client, "+14155550101")
    lab = "/api/orchestrators/E4_SmsPhoneVerification"
    r = await client.post(lab, json="+14155550102", headers=AUTH)
    assert r.status == 202, await r.text()
    text = await (await client.get("/metrics")).text()
    assert 'http_requests_by_surface_total{status="201",surface="twilio_verify_v2"} 1.0' in text
    assert 'http_requests_by_surface_total{status="404",surface="twilio_verify_v2"} 1.0' in text
    assert 'http_requests_by_surface_total{status="202",surface="v1"} 1.0' in text
    assert 'http_requests_by_surface_total{status="202",surface="durable_functions"} 1.0' in text


async def test_an_unknown_path_asks_for_credentials_first(make_client: MakeClient) -> None:
    client = await make_client()
    for method, path in [("GET", "/v2/Nowhere"), ("PUT", "/v2/Services")]:
        r = await client.request(method, path)
        assert r.status == 401, (method, path, await r.text())
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        body = await r.json()
        assert (body["code"], body["status"]) == (20003, 401)
