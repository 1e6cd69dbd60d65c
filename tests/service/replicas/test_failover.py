"""A replica lost (SIGKILL), paused past its lease (SIGSTOP), or leaving (SIGTERM): the others take
its verifications over, and nothing is decided twice, sent twice with another code, or lost.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.support.api import wrong
from tests.support.replicas import MakeReplicas, Replica, Replicas, phone, unix

MAX_ATTEMPTS = 3


async def started_on(
    cluster: Replicas, replica: Replica, numbers: range, *, wait_sms: bool = True
) -> list[dict[str, Any]]:
    """Verifications started on `replica`, one per number; with `wait_sms`, their SMS sent and
    recorded, so that no one sends them again."""
    views = [await cluster.start(replica, phone(n)) for n in numbers]
    if wait_sms:
        for n in numbers:
            await cluster.twilio.wait_for_message(phone(n))
        await cluster.wait_sms_recorded(v["id"] for v in views)
    return views


def code_of(cluster: Replicas, view: dict[str, Any]) -> str:
    return cluster.twilio.code_for(view["to"])


async def test_a_killed_replicas_verifications_are_adopted_and_end_once(
    make_replicas: MakeReplicas,
) -> None:
    ttl = 5.0
    cluster = await make_replicas(3, ttl_seconds=ttl, VERIFY_SMS_TIMEOUT_SECONDS="30")
    a, b, c = cluster.replicas
    twilio = cluster.twilio
    # Early: left alone, they expire while a is dead and before anyone has adopted them.
    early = await started_on(cluster, a, range(0, 3))
    await asyncio.sleep(3.0)
    # Sent: their SMS went out and was recorded.
    sent = await started_on(cluster, a, range(10, 14))
    # Hung: a's requests to Twilio never answered; their SMS never went out.
    twilio.hold(a.account_sid, "hang")
    hung = await started_on(cluster, a, range(20, 23), wait_sms=False)
    await twilio.wait_held(a.account_sid, 3)
    # Unconfirmed: Twilio sent the SMS, but a never heard so, nor recorded it.
    twilio.hold(a.account_sid, "accept")
    unconfirmed = await started_on(cluster, a, range(30, 32), wait_sms=False)
    for v in unconfirmed:
        await twilio.wait_for_message(v["to"])
    first_codes = {v["id"]: code_of(cluster, v) for v in unconfirmed}

    await asyncio.sleep(max(0.0, min(unix(v["expires_at"]) for v in early) - 0.5 - time.time()))
    killed_at = time.monotonic()
    await a.kill()
    assert time.time() < min(unix(v["expires_at"]) for v in early), (
        "too slow: the early ones expired before"
    )

    # Codes typed meanwhile, to the survivors, before anyone adopted a's work.
    s0, s1, s2, s3 = sent
    u0, u1 = unconfirmed
    answers = await asyncio.gather(
        cluster.code(b, s0["id"], code_of(cluster, s0)),
        cluster.code(c, s1["id"], code_of(cluster, s1)),
        cluster.code(c, s2["id"], wrong(code_of(cluster, s2))),
        cluster.code(b, u0["id"], first_codes[u0["id"]]),
    )
    assert [(status, body["status"]) for status, body in answers] == [
        (200, "approved"),
        (200, "approved"),
        (200, "pending"),
        (200, "approved"),
    ], answers
    orphans = await cluster.held_by(a)
    assert orphans == len(early) + 2 + len(hung) + 1
    adoption = await cluster.wait_adopted(orphans, since=killed_at, replicas=[b, c])
    print(f"adopted {orphans} within {adoption:.2f} s of the SIGKILL")
    assert adoption <= cluster.lease_seconds * 1.2 + 1.0, adoption
    assert await cluster.held_by(a) == 0

    # The SMS a never sent go out from their adopter; the unconfirmed one again, same code.
    for v in hung:
        message = await twilio.wait_for_message(v["to"])
        assert message.account_sid in (b.account_sid, c.account_sid)
        status, view = await cluster.code(
            b if message.account_sid == c.account_sid else c, v["id"], message.code or ""
        )
        assert (status, view["status"]) == (200, "approved"), view
    resent = await twilio.wait_for_message(u1["to"])
    assert resent.code == first_codes[u1["id"]]
    assert resent.account_sid in (b.account_sid, c.account_sid)
    status, view = await cluster.code(c, u1["id"], resent.code or "")
    assert (status, view["status"]) == (200, "approved"), view
    status, view = await cluster.code(b, s2["id"], code_of(cluster, s2))
    assert (status, view["status"]) == (200, "approved"), view

    expected = {v["id"]: "expired" for v in [*early, s3]} | {
        v["id"]: "approved" for v in [s0, s1, s2, *hung, *unconfirmed]
    }
    finals = await cluster.wait_final(b, expected)
    assert {i: v["status"] for i, v in finals.items()} == expected
    outcomes = await cluster.outcomes(expected)
    assert {i: [o.status for o in outcomes.get(i, [])] for i in expected} == {
        i: [status] for i, status in expected.items()
    }
    assert len(cluster.received) == len(expected)
    # Deadlines: the early ones expired at adoption, one lease late at most; s3 on time.
    rows = await cluster.rows(expected)
    box = await cluster.outbox(expected)
    late = {v["id"]: box[v["id"]]["created_at"] - rows[v["id"]]["expires_at"] for v in early}
    print(f"early expiries decided {min(late.values()):.2f}-{max(late.values()):.2f} s late")
    assert all(0 <= s <= cluster.lease_seconds + 0.5 for s in late.values()), late
    on_time = box[s3["id"]]["created_at"] - rows[s3["id"]]["expires_at"]
    assert 0 <= on_time <= 0.5, on_time
    assert rows[s3["id"]]["holder"] in ("b", "c")
    # Each SMS went out once, or twice with the same code where a was not told it had.
    for v in [*early, *sent]:
        assert twilio.senders(v["to"]) == [a.account_sid], v
    for v in hung:
        assert len(twilio.senders(v["to"])) == 1, v
    assert twilio.senders(u0["to"]) == [a.account_sid]
    assert len({m.code for m in twilio.messages_to(u1["to"])}) == 1


#: What a stale write of a paused replica would change in a verification's row.
WATCHED = (
    "status, holder, attempts, attempts_left, completed_at, expires_at, sms_sent_at, sms_id, reason"
)


async def snapshot(cluster: Replicas, ids: list[str]) -> tuple[list[Any], list[Any]]:
    db = cluster.connection()
    rows = await db.fetch(
        f"SELECT id, {WATCHED} FROM verifications WHERE id = ANY($1::text[]) ORDER BY id", ids
    )
    box = await db.fetch(
        "SELECT verification_id, status, body, holder, sent_at, attempts FROM outbox"
        " WHERE verification_id = ANY($1::text[]) ORDER BY verification_id",
        ids,
    )
    return [tuple(r) for r in rows], [tuple(r) for r in box]


async def test_a_replica_paused_past_its_lease_writes_nothing_stale_and_rejoins(
    make_replicas: MakeReplicas,
) -> None:
    cluster = await make_replicas(3, ttl_seconds=4.0, VERIFY_SMS_TIMEOUT_SECONDS="30")
    a, b, c = cluster.replicas
    twilio = cluster.twilio
    x, y, z = await started_on(cluster, a, range(0, 3))
    # w's SMS is taken by Twilio, but a hears so only after its pause: a stale checkpoint.
    twilio.hold(a.account_sid, "accept")
    (w,) = await started_on(cluster, a, range(3, 4), wait_sms=False)
    w_code = (await twilio.wait_for_message(w["to"])).code or ""
    ids = [x["id"], y["id"], z["id"], w["id"]]
    epoch = await cluster.epoch(a)

    paused_at = time.monotonic()
    await a.pause()
    status, view = await cluster.code(b, x["id"], code_of(cluster, x))
    assert (status, view["status"]) == (200, "approved"), view
    status, view = await cluster.code(c, y["id"], wrong(code_of(cluster, y)))
    assert (status, view["status"]) == (200, "pending"), view
    adoption = await cluster.wait_adopted(3, since=paused_at, replicas=[b, c])
    print(f"adopted 3 within {adoption:.2f} s of the SIGSTOP")
    assert adoption <= cluster.lease_seconds * 1.2 + 1.0, adoption
    resent = await twilio.wait_for_message(w["to"])  # a never recorded it: sent again
    assert (resent.code, resent.account_sid in (b.account_sid, c.account_sid)) == (w_code, True)
    status, view = await cluster.cancel(c, z["id"])
    assert (status, view["status"]) == (200, "canceled"), view
    status, view = await cluster.code(b, w["id"], w_code)
    assert (status, view["status"]) == (200, "approved"), view
    finals = await cluster.wait_final(b, ids)  # y expires on its adopter, a still paused
    expected = {x["id"]: "approved", y["id"]: "expired", z["id"]: "canceled", w["id"]: "approved"}
    assert {i: v["status"] for i, v in finals.items()} == expected
    outcomes = await cluster.outcomes(ids, quiet=0.5)
    assert {i: [o.status for o in outcomes[i]] for i in ids} == {
        i: [status] for i, status in expected.items()
    }
    before = await snapshot(cluster, ids)
    holders = {row[0]: row[2] for row in before[0]}
    # x was decided by b without being adopted (it was not pending any more); the rest were.
    assert holders[x["id"]] == "a"
    assert {holders[v["id"]] for v in (y, z, w)} <= {"b", "c"}, holders

    # Requests for them sent to a while it is paused wait in its socket; a still believes every
    # one of them pending, as it last saw them.
    stale = [
        asyncio.create_task(cluster.call(a, "POST", f"/verifications/{v['id']}/code", json=body))
        for v, body in ((x, {"code": code_of(cluster, x)}), (y, {"code": code_of(cluster, y)}))
    ] + [
        asyncio.create_task(cluster.call(a, "DELETE", f"/verifications/{v['id']}")) for v in (z, w)
    ]
    await asyncio.sleep(0.2)
    # a carries on where it was: y's deadline has passed, w's SMS answer comes in, and those.
    twilio.release(a.account_sid)
    await a.resume()
    answers = await asyncio.gather(*stale)
    # Each is refused as too late, or, cut short as a lets go of what it held, to be asked again.
    for v, (status, headers, body) in zip((x, y, z, w), answers, strict=True):
        if status == 503:
            assert "Retry-After" in headers, body
        else:
            assert (status, body["verification"]["status"]) == (409, expected[v["id"]]), body
    await cluster.rejoined(a, epoch)  # it learns it lost the lease, and joins again
    for v in (x, y, z, w):  # asked again, a knows
        status, body = await cluster.cancel(a, v["id"])
        assert (status, body["verification"]["status"]) == (409, expected[v["id"]]), body
    await asyncio.sleep(cluster.lease_seconds)
    assert await snapshot(cluster, ids) == before, "a stale write of the paused replica landed"
    await cluster.outcomes(ids, quiet=1.0)
    assert len(cluster.received) == len(ids), "an outcome was published again"
    assert len(twilio.messages_to(w["to"])) == 2

    # And it works again.
    fresh = await cluster.start(a, phone(10))
    message = await twilio.wait_for_message(phone(10))
    assert message.account_sid == a.account_sid
    status, view = await cluster.code(a, fresh["id"], message.code or "")
    assert (status, view["status"]) == (200, "approved"), view
    assert (await cluster.row(fresh["id"]))["holder"] == "a"
    outcomes = await cluster.outcomes([fresh["id"]], quiet=0.5)
    assert [o.status for o in outcomes[fresh["id"]]] == ["approved"]


async def test_a_replica_stopped_with_sigterm_hands_its_work_over_at_once(
    make_replicas: MakeReplicas,
) -> None:
    # A lease of 5 s: a takeover within about a second shows the handover, not a lapse.
    cluster = await make_replicas(3, lease_seconds=5.0)
    a, b, c = cluster.replicas
    views = await started_on(cluster, a, range(0, 6))

    stopped_at = time.monotonic()
    assert await a.stop() == 0, a.logs()
    stopping = time.monotonic() - stopped_at
    adoption = await cluster.wait_adopted(len(views), since=stopped_at, replicas=[b, c])
    print(
        f"adopted {len(views)} within {adoption:.2f} s of the SIGTERM"
        f" (the stop itself took {stopping:.2f} s)"
    )
    assert adoption <= stopping + cluster.check_seconds + 0.5, (adoption, stopping)
    assert adoption < cluster.lease_seconds / 2
    assert await cluster.held_by(a) == 0

    # The survivors carry them on: codes are decided, cancels too, and no SMS goes out again.
    for n, v in enumerate(views):
        replica = (b, c)[n % 2]
        if n < 3:
            status, view = await cluster.code(replica, v["id"], code_of(cluster, v))
            assert (status, view["status"]) == (200, "approved"), view
        else:
            status, view = await cluster.cancel(replica, v["id"])
            assert (status, view["status"]) == (200, "canceled"), view
    outcomes = await cluster.outcomes(v["id"] for v in views)
    assert {v["id"]: len(outcomes[v["id"]]) for v in views} == {v["id"]: 1 for v in views}
    assert len(cluster.twilio.messages) == len(views)
    # Back under its name, it holds nothing of its old work, and starts anew.
    await a.start()
    assert await cluster.held_by(a) == 0
    fresh = await cluster.start(a, phone(10))
    assert (await cluster.row(fresh["id"]))["holder"] == "a"
