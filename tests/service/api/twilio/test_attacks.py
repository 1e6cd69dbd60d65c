"""The Twilio Verify v2 surface attacked: at once, oddly spelled, across Services, on a bad day.

Through public interfaces only: Twilio's HTTP API (raw, with Basic auth, or the official SDK),
the v1 API, the SQLite file (locked from another connection, read back) and restarts on it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BasicAuth, web
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.support.api import API_KEY, AUTH, MakeClient, MakeSettings, wrong
from tests.support.database import database
from tests.support.twilio import TwilioServer
from tests.support.verify_v2 import ACCOUNT_SID, SERVICE_SID, Sdk

TO = "+14155550100"
BASIC = {"Authorization": BasicAuth(ACCOUNT_SID, API_KEY).encode()}
SHORT = "VA" + "5" * 32
SHORT_SERVICE = {
    "sid": SHORT,
    "friendly_name": "Short codes",
    "code_length": 4,
    "ttl_seconds": 45,
    "max_attempts": 1,
    "template": "Sign-in code {code}",
}
FAST_FAILURE = {"busy_timeout_ms": 50, "write_retry_seconds": 0.2}

Client = TestClient[web.Request, web.Application]


async def post(client: Client, path: str, **form: str) -> tuple[int, dict[str, Any]]:
    r = await client.post(f"/v2{path}", data=form, headers=BASIC)
    return r.status, await r.json()


async def get(client: Client, path: str) -> tuple[int, dict[str, Any]]:
    r = await client.get(f"/v2{path}", headers=BASIC)
    return r.status, await r.json()


async def get_encoded(client: Client, path: str) -> tuple[int, dict[str, Any]]:
    """GET `path` exactly as written: its percent-escapes are sent as they are."""
    url = URL(str(client.make_url("")).rstrip("/") + f"/v2{path}", encoded=True)
    async with client.session.get(url, headers=BASIC) as r:
        return r.status, await r.json()


def create(client: Client, to: str = TO, sid: str = SERVICE_SID) -> Any:
    return post(client, f"/Services/{sid}/Verifications", To=to, Channel="sms")


def check(client: Client, sid: str = SERVICE_SID, **form: str) -> Any:
    return post(client, f"/Services/{sid}/VerificationCheck", **form)


#: These tests read and lock the SQLite file; on PostgreSQL (VERIFY_TEST_STORE) they do not.
ON_SQLITE = os.environ.get("VERIFY_TEST_STORE", "sqlite") in ("", "sqlite")
sqlite_only = pytest.mark.skipif(not ON_SQLITE, reason="locks the SQLite file")


def assert_outbox(path: Path, expected: list[tuple[str, str]]) -> None:
    """The outcomes published, read from the SQLite file (on PostgreSQL, not checked)."""
    if not ON_SQLITE:
        return
    with database(path) as db:
        rows = db.execute("SELECT verification_id, status FROM outbox ORDER BY seq").fetchall()
    assert [(str(a), str(b)) for a, b in rows] == expected


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection, as another process would."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


async def settle(twilio: TwilioServer, to: str = TO, seconds: float = 0.3) -> int:
    """How many messages `to` has had, once the sends in flight have had time to land."""
    await asyncio.sleep(seconds)
    return len(twilio.messages_to(to))


# -- the same request many times at once ----------------------------------------------------------


async def test_creates_at_once_make_one_verification_listing_each_send(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client()
    answers = await asyncio.gather(*(create(client) for _ in range(9)))
    made = [body for status, body in answers if status == 201]
    refused = [(status, body["code"]) for status, body in answers if status != 201]
    # limits.sms_per_phone is 5: the first send and four resends, the others 60203.
    assert len(made) == 5 and refused == [(429, 60203)] * 4, answers
    assert len({body["sid"] for body in made}) == 1
    status, fetched = await get(client, f"/Services/{SERVICE_SID}/Verifications/{TO}")
    assert status == 200
    assert len(fetched["send_code_attempts"]) == 5 == await settle(twilio)
    sids = [a["attempt_sid"] for a in fetched["send_code_attempts"]]
    assert len(set(sids)) == 5


async def test_wrong_codes_at_once_spend_exactly_the_attempts(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    client = await make_client()
    _, v = await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    answers = await asyncio.gather(*(check(client, To=TO, Code=wrong(code)) for _ in range(7)))
    statuses = sorted(b["status"] for s, b in answers if s == 200)
    assert statuses == sorted(["pending", "pending", "max_attempts_reached"]), answers
    assert [(s, b["code"]) for s, b in answers if s != 200] == [(429, 60202)] * 4
    assert_outbox(tmp_path / "verifications.db", [(v["sid"], "max_attempts_reached")])


async def test_right_codes_at_once_approve_once(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    client = await make_client()
    _, v = await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    answers = await asyncio.gather(
        *(check(client, To=TO, Code=code) for _ in range(3)),
        *(check(client, VerificationSid=v["sid"], Code=code) for _ in range(3)),
    )
    approved = [b for s, b in answers if s == 200]
    assert [b["status"] for b in approved] == ["approved"], answers
    assert [(s, b["code"]) for s, b in answers if s != 200] == [(404, 20404)] * 5
    assert_outbox(tmp_path / "verifications.db", [(v["sid"], "approved")])


async def test_approve_cancel_and_code_at_once_decide_once(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    client = await make_client()
    _, v = await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    path = f"/Services/{SERVICE_SID}/Verifications/{v['sid']}"
    answers = await asyncio.gather(
        post(client, path, Status="approved"),
        post(client, path, Status="canceled"),
        check(client, VerificationSid=v["sid"], Code=code),
        post(client, f"/Services/{SERVICE_SID}/Verifications/{TO}", Status="canceled"),
    )
    won = [b["status"] for s, b in answers if s == 200]
    assert len(won) == 1, answers
    assert [(s, b["code"]) for s, b in answers if s != 200] == [(404, 20404)] * 3
    assert_outbox(tmp_path / "verifications.db", [(v["sid"], won[0])])


async def test_creates_in_two_services_at_once_one_wins(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    answers = await asyncio.gather(*(create(client, sid=sid) for sid in (SERVICE_SID, SHORT) * 3))
    won = {b["service_sid"] for s, b in answers if s == 201}
    assert len(won) == 1, answers
    lost = [(s, b["code"]) for s, b in answers if s != 201]
    assert lost == [(409, 20409)] * 3, answers
    # Only the winner's sends went out: one first, two resends.
    assert await settle(twilio) == 3


# -- odd but valid input --------------------------------------------------------------------------


async def test_every_spelling_of_the_number_is_the_same_verification(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client()
    status, v = await create(client, to="+1 (415) 555-0100")
    assert (status, v["to"]) == (201, TO)
    status, again = await create(client, to="+1.415.555.0100")
    assert (status, again["sid"]) == (201, v["sid"])
    base = f"/Services/{SERVICE_SID}/Verifications"
    for name in ("+1 415 555 0100", "+1 (415) 555-0100"):
        status, fetched = await get(client, f"{base}/{name}")
        assert (status, fetched.get("sid")) == (200, v["sid"]), name
    for name in ("%2B14155550100", "%2B1%20415%20555%200100"):
        status, fetched = await get_encoded(client, f"{base}/{name}")
        assert (status, fetched.get("sid")) == (200, v["sid"]), name
    # Through the SDK, which puts the number in the path as the app gives it.
    sdk = Sdk(str(client.make_url("")).rstrip("/"), API_KEY)
    fetched_sdk = await sdk(lambda: sdk.service.verifications("+1 415 555 0100").fetch())
    assert fetched_sdk.sid == v["sid"]
    code = (await twilio.wait_for_message(TO)).code or ""
    status, checked = await check(client, To="+1-415-555-0100", Code=code)
    assert (status, checked["status"]) == (200, "approved")


async def test_a_lower_case_service_sid_is_that_service(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    status, v = await create(client, sid=SHORT.lower())
    assert (status, v["service_sid"]) == (201, SHORT)
    message = await twilio.wait_for_message(TO)
    assert len(message.code or "") == 4 and message.body.startswith("Sign-in code")
    status, fetched = await get(client, f"/Services/{SHORT}/Verifications/{v['sid']}")
    assert (status, fetched["sid"]) == (200, v["sid"])
    status, checked = await check(client, SHORT.lower(), To=TO, Code=message.code or "")
    assert (status, checked["status"], checked["service_sid"]) == (200, "approved", SHORT)


async def test_another_services_sid_in_the_path_touches_nothing(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    _, v = await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    elsewhere = f"/Services/{SHORT}/Verifications"
    attempts = [
        get(client, f"{elsewhere}/{v['sid']}"),
        get(client, f"{elsewhere}/{TO}"),
        post(client, f"{elsewhere}/{v['sid']}", Status="approved"),
        post(client, f"{elsewhere}/{TO}", Status="canceled"),
        check(client, SHORT, VerificationSid=v["sid"], Code=code),
        check(client, SHORT, To=TO, Code=wrong(code)),
    ]
    for status, body in [await a for a in attempts]:
        assert (status, body["code"]) == (404, 20404), body
    native = await (await client.get(f"/verifications/{v['sid']}", headers=AUTH)).json()
    assert (native["status"], native["attempts_left"]) == ("pending", 3)
    assert_outbox(tmp_path / "verifications.db", [])


async def test_a_code_of_the_wrong_length_for_a_short_service_is_a_wrong_code(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    await create(client, sid=SHORT)
    code = (await twilio.wait_for_message(TO)).code or ""
    # The 4-digit code with two more digits is not it, though it starts with it.
    status, checked = await check(client, SHORT, To=TO, Code=code + "00")
    assert (status, checked["status"], checked["valid"]) == (200, "max_attempts_reached", False)
    status, body = await check(client, SHORT, To=TO, Code=code)
    assert (status, body["code"]) == (429, 60202)


async def test_create_ignores_code_length(make_client: MakeClient, twilio: TwilioServer) -> None:
    """A Verification has no CodeLength on Twilio: the Service's length holds."""
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    status, _ = await post(
        client, f"/Services/{SHORT}/Verifications", To=TO, Channel="sms", CodeLength="8"
    )
    assert status == 201
    assert len((await twilio.wait_for_message(TO)).code or "") == 4


# -- finished, as the README's table says ---------------------------------------------------------


async def test_fetch_and_update_of_a_spent_verification_are_404(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verification={"max_attempts": 1})
    _, v = await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    status, spent = await check(client, To=TO, Code=wrong(code))
    assert (status, spent["status"]) == (200, "max_attempts_reached")
    base = f"/Services/{SERVICE_SID}/Verifications"
    for status, body in [
        await get(client, f"{base}/{v['sid']}"),
        await get(client, f"{base}/{TO}"),
        await post(client, f"{base}/{v['sid']}", Status="canceled"),
        await post(client, f"{base}/{TO}", Status="approved"),
    ]:
        assert (status, body["code"]) == (404, 20404), body


async def test_a_check_after_a_newer_verification_is_approved_is_404(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    client = await make_client(verification={"max_attempts": 1})
    await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    status, spent = await check(client, To=TO, Code=wrong(code))
    assert spent["status"] == "max_attempts_reached"
    twilio.clear()
    status, newer = await create(client)
    assert status == 201
    code = (await twilio.wait_for_message(TO)).code or ""
    status, approved = await check(client, To=TO, Code=code)
    assert (status, approved["status"], approved["sid"]) == (200, "approved", newer["sid"])
    status, body = await check(client, To=TO, Code=code)
    assert (status, body["code"]) == (404, 20404)


async def test_approve_after_the_deadline_is_404_and_expires(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    brief = {**SHORT_SERVICE, "ttl_seconds": 0.5, "max_attempts": 3}
    client = await make_client(verify_v2={"services": [brief]})
    _, v = await create(client, sid=SHORT)
    await twilio.wait_for_message(TO)
    await asyncio.sleep(0.7)
    status, body = await post(
        client, f"/Services/{SHORT}/Verifications/{v['sid']}", Status="approved"
    )
    assert (status, body["code"]) == (404, 20404)
    native = await (await client.get(f"/verifications/{v['sid']}", headers=AUTH)).json()
    assert native["status"] == "expired"
    assert_outbox(tmp_path / "verifications.db", [(v["sid"], "expired")])


# -- the database failing during a resend ---------------------------------------------------------


@sqlite_only
async def test_a_resend_refused_by_the_database_is_neither_sent_nor_listed(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(database=FAST_FAILURE)
    client = await make_client(settings)
    _, v = await create(client)
    await twilio.wait_for_message(TO)
    with write_locked(Path(settings.database.path)):
        status, body = await create(client)
        assert (status, body["code"]) == (503, 20503), body
    assert await settle(twilio) == 1
    status, fetched = await get(client, f"/Services/{SERVICE_SID}/Verifications/{v['sid']}")
    assert len(fetched["send_code_attempts"]) == 1
    # The limits were refunded: the refused resend did not count against sms_per_phone (5).
    for _ in range(4):
        status, _ = await create(client)
        assert status == 201
    assert await settle(twilio) == 5


@sqlite_only
async def test_an_idempotency_key_refused_by_the_database_is_not_left_claimed(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(database=FAST_FAILURE)
    client = await make_client(settings)
    _, v = await create(client)
    await twilio.wait_for_message(TO)
    keyed = {**AUTH, "Idempotency-Key": "resend-1"}
    with write_locked(Path(settings.database.path)):
        r = await client.post("/verifications", json={"phone": TO}, headers=keyed)
        assert r.status == 503, await r.text()
    assert await settle(twilio) == 1
    # The key was not claimed: asking again resends, once, and a replay then sends nothing.
    for _ in range(2):
        r = await client.post("/verifications", json={"phone": TO}, headers=keyed)
        assert r.status == 202 and (await r.json())["id"] == v["sid"]
    assert await settle(twilio) == 2
    _, fetched = await get(client, f"/Services/{SERVICE_SID}/Verifications/{TO}")
    assert len(fetched["send_code_attempts"]) == 2


async def test_an_idempotency_key_of_another_service_number_claims_nothing(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    """A key first offered for a number pending in another Service: 409, and the key is free."""
    client = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    await create(client, sid=SHORT)
    await twilio.wait_for_message(TO)
    keyed = {**AUTH, "Idempotency-Key": "k-1"}
    r = await client.post("/verifications", json={"phone": TO}, headers=keyed)
    assert r.status == 409, await r.text()
    r = await client.post("/verifications", json={"phone": "+14155550101"}, headers=keyed)
    assert r.status == 202, await r.text()
    assert await settle(twilio) == 1


# -- restarts and configuration changes -----------------------------------------------------------


async def test_a_restart_keeps_resends_length_attempts_and_deadline(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    first = await make_client(verify_v2={"services": [SHORT_SERVICE]})
    _, v = await create(first, sid=SHORT)
    code = (await twilio.wait_for_message(TO)).code or ""
    await create(first, sid=SHORT)
    _, before = await get(first, f"/Services/{SHORT}/Verifications/{v['sid']}")
    await first.close()
    changed = {**SHORT_SERVICE, "code_length": 6, "ttl_seconds": 1, "max_attempts": 5}
    again = await make_client(verify_v2={"services": [changed]})
    status, after = await get(again, f"/Services/{SHORT}/Verifications/{TO}")
    assert status == 200
    assert after["send_code_attempts"] == before["send_code_attempts"]
    native = await (await again.get(f"/verifications/{v['sid']}", headers=AUTH)).json()
    assert native["attempts_left"] == 1
    # Past the new TTL, the old deadline (45 s) still holds; the 4-digit code still works.
    await asyncio.sleep(1.1)
    status, checked = await check(again, SHORT, To=TO, Code=code)
    assert (status, checked["status"]) == (200, "approved")


async def test_the_first_service_keeps_a_codes_length_when_the_service_changes(
    make_client: MakeClient, twilio: TwilioServer
) -> None:
    first = await make_client()
    await create(first)
    code = (await twilio.wait_for_message(TO)).code or ""
    assert len(code) == 6
    await first.close()
    again = await make_client(verification={"code_length": 8})
    _, service = await get(again, f"/Services/{SERVICE_SID}")
    assert service["code_length"] == 8
    status, checked = await check(again, To=TO, Code=code)
    assert (status, checked["status"]) == (200, "approved")


OTHER_KEY = "other-key-0123456789"


async def test_another_keys_requests_for_the_number_touch_nothing(
    make_client: MakeClient, twilio: TwilioServer, tmp_path: Path
) -> None:
    client = await make_client(auth={"api_keys": [API_KEY, OTHER_KEY]})
    _, v = await create(client)
    code = (await twilio.wait_for_message(TO)).code or ""
    other = {"Authorization": BasicAuth(ACCOUNT_SID, OTHER_KEY).encode()}
    base = f"/v2/Services/{SERVICE_SID}"
    for method, path, form in [
        ("GET", f"{base}/Verifications/{TO}", None),
        ("GET", f"{base}/Verifications/{v['sid']}", None),
        ("POST", f"{base}/Verifications/{v['sid']}", {"Status": "approved"}),
        ("POST", f"{base}/VerificationCheck", {"To": TO, "Code": wrong(code)}),
        ("POST", f"{base}/VerificationCheck", {"VerificationSid": v["sid"], "Code": code}),
    ]:
        r = await client.request(method, path, data=form, headers=other)
        assert (r.status, (await r.json())["code"]) == (404, 20404), (method, path)
    native = await (await client.get(f"/verifications/{v['sid']}", headers=AUTH)).json()
    assert (native["status"], native["attempts_left"]) == ("pending", 3)
    assert_outbox(tmp_path / "verifications.db", [])
