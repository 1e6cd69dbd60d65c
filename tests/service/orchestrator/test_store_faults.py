"""The database failing: no zombie verifications, 503 with Retry-After, decided once afterwards.

The database is made to fail the way it does in production: another process holds its write lock
past `busy_timeout` (a backup, someone in the sqlite3 shell). The service must answer 503 with
nothing changed, keep every verification armed and answerable, and decide each once it recovers.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.api import AUTH, MakeClient, MakeSettings, start, submit, wrong
from tests.support.database import database
from tests.support.twilio import TwilioServer

PHONE = "+14155550100"
FAST_FAILURE = {"busy_timeout_ms": 50, "write_retry_seconds": 0.2}


@contextmanager
def write_locked(path: str) -> Iterator[None]:
    """Hold the database's write lock from another connection, as another process would."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def outbox(path: str) -> list[tuple[str, str]]:
    with database(path) as db:
        return db.execute("SELECT verification_id, status FROM outbox ORDER BY seq").fetchall()


def row_status(path: str, verification_id: str) -> str:
    with database(path) as db:
        (status,) = db.execute(
            "SELECT status FROM verifications WHERE id = ?", (verification_id,)
        ).fetchone()
    return str(status)


async def test_code_while_locked_is_503_then_decided_once_the_lock_goes(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(database=FAST_FAILURE)
    client = await make_client(settings)
    path = settings.database.path
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""

    with write_locked(path):
        r = await client.post(
            f"/verifications/{view['id']}/code", json={"code": code}, headers=AUTH
        )
        assert r.status == 503, await r.text()
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "database_unavailable"
        health = await client.get("/healthz")
        assert health.status == 503
        # Reads still work, and nothing changed: the same verification, still pending.
        r = await client.get(f"/verifications/{view['id']}", headers=AUTH)
        assert (r.status, (await r.json())["status"]) == (200, "pending")
        # A second start for the number is the same verification, not a second one.
        r = await client.post("/verifications", json={"phone": PHONE}, headers=AUTH)
        assert r.status in (202, 503), await r.text()
        if r.status == 202:
            assert (await r.json())["id"] == view["id"]

    assert (await client.get("/healthz")).status == 200
    status, body = await submit(client, view["id"], code)
    assert (status, body["status"]) == (200, "approved")
    assert outbox(path) == [(view["id"], "approved")]


async def test_wrong_code_while_locked_spends_no_attempt(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(database=FAST_FAILURE)
    client = await make_client(settings)
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""

    with write_locked(settings.database.path):
        status, _ = await submit(client, view["id"], wrong(code))
        assert status == 503

    status, body = await submit(client, view["id"], wrong(code))
    assert (status, body["attempts_left"]) == (200, 2)  # only the answered one was spent


async def test_a_short_lock_is_ridden_out_and_the_code_approved(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings(database={"busy_timeout_ms": 50, "write_retry_seconds": 3.0})
    client = await make_client(settings)
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""

    db = sqlite3.connect(settings.database.path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    answer = asyncio.create_task(submit(client, view["id"], code))
    await asyncio.sleep(0.5)
    assert not answer.done(), "the code should wait for the database, not fail at once"
    db.execute("ROLLBACK")
    db.close()

    status, body = await answer
    assert (status, body["status"]) == (200, "approved")


async def test_deadline_during_a_lock_expires_once_the_lock_goes(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    ttl = 0.5
    settings = make_settings(database=FAST_FAILURE, verification={"ttl_seconds": ttl})
    client = await make_client(settings)
    path = settings.database.path
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""

    with write_locked(path):
        await asyncio.sleep(ttl + 0.5)  # the deadline passes while nothing can be written
        # The right code, but late: never accepted, whatever the database does.
        status, body = await submit(client, view["id"], code)
        assert status in (409, 503), body
        assert row_status(path, view["id"]) == "pending"

    body = await wait_status(client, view["id"], "expired")
    assert body["completed_at"] == body["expires_at"]
    assert outbox(path) == [(view["id"], "expired")]
    status, body = await submit(client, view["id"], code)
    assert (status, body["verification"]["status"]) == (409, "expired")


async def test_sms_sender_raising_the_unexpected_ends_failed_not_a_zombie(
    client: Any, twilio: TwilioServer
) -> None:
    # A 201 whose body is not JSON makes the twilio SDK raise an error it does not document.
    twilio.set_faults("garbage", count=1)
    view = await start(client, PHONE)

    body = await wait_status(client, view["id"], "failed")
    assert "sms sender error" in body["reason"]
    # The number is free again: a new start is a new verification, and its SMS goes out.
    again = await start(client, PHONE)
    assert again["id"] != view["id"]
    await twilio.wait_for_message(PHONE)


async def test_a_row_changed_behind_the_services_back_is_never_acknowledged(
    make_client: MakeClient, make_settings: MakeSettings, twilio: TwilioServer
) -> None:
    settings = make_settings()
    client = await make_client(settings)
    view = await start(client, PHONE)
    code = (await twilio.wait_for_message(PHONE)).code or ""
    with database(settings.database.path) as db:
        db.execute("UPDATE verifications SET status = 'canceled' WHERE id = ?", (view["id"],))

    status, body = await submit(client, view["id"], code)

    assert status == 409, body
    assert body["verification"]["status"] == "canceled"
    assert outbox(settings.database.path) == []


async def wait_status(
    client: Any, verification_id: str, status: str, seconds: float = 5
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await client.get(f"/verifications/{verification_id}", headers=AUTH)
        body = await r.json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{verification_id} is not {status} after {seconds} s: {body}")
