"""The HTTP contract's errors: each refused with its status and code, and nothing changed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import AUTH, MakeClient, MakeSettings, start
from tests.support.database import database
from tests.support.twilio import TwilioServer

JSON = {**AUTH, "Content-Type": "application/json"}


def rows(db_path: str) -> int:
    with database(db_path) as db:
        return int(db.execute("SELECT count(*) FROM verifications").fetchone()[0])


@pytest.fixture
async def settings_and_client(make_settings: MakeSettings, make_client: MakeClient) -> Any:
    settings = make_settings()
    return settings, await make_client(settings)


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ('{"phone": ', JSON, 400, "malformed_json"),
        ("[1, 2]", JSON, 400, "not_an_object"),
        ('{"phone": 14155550100}', JSON, 400, "invalid_type"),
        ('{"phone": "+14155550100", "reference": 7}', JSON, 400, "invalid_type"),
        ("{}", JSON, 400, "missing_field"),
        ('{"phone": "+14155550100", "pin": "1"}', JSON, 400, "unknown_field"),
        ('{"phone": "+14155550100"}', {**AUTH, "Content-Type": "text/plain"}, 415, None),
        ('{"phone": "+1 415 555 0100 ext. 5"}', JSON, 422, "invalid_phone"),
        ('{"phone": "+1 415 CALL ME"}', JSON, 422, "invalid_phone"),
        ('{"phone": "+1415555010"}', JSON, 422, "invalid_phone"),
        ('{"phone": "14155550100"}', JSON, 422, "invalid_phone"),
        ('{"phone": "+14155550100", "reference": "' + "x" * 201 + '"}', JSON, 422, None),
        ('{"phone": "+14155550100"}', {"Content-Type": "application/json"}, 401, None),
        (
            '{"phone": "+14155550100"}',
            {"Content-Type": "application/json", "Authorization": "Bearer wrong"},
            401,
            "invalid_api_key",
        ),
    ],
)
async def test_bad_start_is_refused_and_changes_nothing(
    settings_and_client: Any,
    twilio: TwilioServer,
    body: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    settings, client = settings_and_client
    r = await client.post("/verifications", data=body, headers=headers)

    assert r.status == status, await r.text()
    error = (await r.json())["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert rows(settings.database.path) == 0
    assert twilio.attempts == 0


async def test_body_too_large_is_refused_before_reading(settings_and_client: Any) -> None:
    settings, client = settings_and_client
    body = '{"phone": "+14155550100", "reference": "' + "x" * 20_000 + '"}'
    r = await client.post("/verifications", data=body, headers=JSON)
    assert r.status == 413
    assert (await r.json())["error"]["code"] == "payload_too_large"
    assert rows(settings.database.path) == 0


async def test_bad_codes_are_refused_and_not_counted(client: Any, twilio: TwilioServer) -> None:
    view = await start(client)
    url = f"/verifications/{view['id']}/code"
    for body, status in [
        ('{"code": "12345"}', 422),
        ('{"code": "12345a"}', 422),
        ('{"code": "\uff11\uff12\uff13\uff14\uff15\uff16"}', 422),
        ('{"code": 123456}', 400),
        ('{"code": "123456"', 400),
        ("{}", 400),
    ]:
        r = await client.post(url, data=body, headers=JSON)
        assert r.status == status, (body, await r.text())
    r = await client.get(f"/verifications/{view['id']}", headers=AUTH)
    assert (await r.json())["attempts_left"] == 3


async def test_unknown_ids_are_404(client: Any) -> None:
    for method, path in [
        ("GET", "/verifications/VEnope"),
        ("DELETE", "/verifications/VEnope"),
        ("POST", "/verifications/VEnope/code"),
    ]:
        r = await client.request(method, path, json={"code": "123456"}, headers=AUTH)
        assert r.status == 404, await r.text()
        assert (await r.json())["error"]["code"] == "not_found"


async def test_view_never_shows_the_code(client: Any, twilio: TwilioServer) -> None:
    view = await start(client)
    await twilio.wait_for_message("+14155550100")
    code = twilio.code_for("+14155550100")
    r = await client.get(f"/verifications/{view['id']}", headers=AUTH)
    text = await r.text()
    assert code not in text
    assert set(await r.json()) == {
        "id",
        "status",
        "to",
        "reference",
        "attempts_left",
        "created_at",
        "expires_at",
        "completed_at",
        "reason",
    }
    assert view["created_at"].endswith("Z") and view["expires_at"] > view["created_at"]


async def test_ids_are_unguessable(client: Any) -> None:
    ids = {(await start(client, f"+1415555{300 + i:04d}"))["id"] for i in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 34 and i.startswith("VE") for i in ids)


async def test_healthz_and_unknown_routes(client: Any) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    r = await client.get("/nowhere")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.put("/verifications", headers=AUTH)
    assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
