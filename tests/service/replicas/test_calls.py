"""Any replica answers for any verification: reads, codes and cancels, whoever started it.

Three replicas on one database; each call goes to the replica the test names, so the one that
started a verification (and holds its SMS, deadline and outcome) is rarely the one answering.
"""

from __future__ import annotations

import asyncio
import random

from tests.support.api import API_KEY, wrong
from tests.support.replicas import MakeReplicas, phone
from tests.support.verify_v2 import Sdk

MAX_ATTEMPTS = 3


async def test_a_verification_started_on_one_replica_is_answered_by_every_other(
    make_replicas: MakeReplicas,
) -> None:
    cluster = await make_replicas(3)
    a, b, c = cluster.replicas
    twilio = cluster.twilio

    started = await cluster.start(a, phone(1))
    code = (await twilio.wait_for_message(phone(1))).code or ""
    for replica in (b, c):
        view = await cluster.get(replica, started["id"])
        assert view == started, replica

    status, view = await cluster.code(b, started["id"], wrong(code))
    assert (status, view["status"], view["attempts_left"]) == (200, "pending", MAX_ATTEMPTS - 1)
    # Spent in the database before the answer: every replica sees it at once.
    assert (await cluster.get(c, started["id"]))["attempts_left"] == MAX_ATTEMPTS - 1
    assert (await cluster.get(a, started["id"]))["attempts_left"] == MAX_ATTEMPTS - 1

    status, view = await cluster.code(c, started["id"], code)  # the verdict, synchronously
    assert (status, view["status"]) == (200, "approved"), view
    assert (await cluster.get(a, started["id"]))["status"] == "approved"
    status, body = await cluster.code(a, started["id"], code)
    assert status == 409, body
    assert body["verification"]["status"] == "approved"

    other = await cluster.start(a, phone(2))
    status, view = await cluster.cancel(b, other["id"])
    assert (status, view["status"]) == (200, "canceled"), view
    assert (await cluster.get(c, other["id"]))["status"] == "canceled"
    status, body = await cluster.cancel(c, other["id"])
    assert status == 409, body

    third = await cluster.start(b, phone(3))
    status, view = await cluster.cancel(c, third["id"])
    assert (status, view["status"]) == (200, "canceled"), view

    ids = [started["id"], other["id"], third["id"]]
    outcomes = await cluster.outcomes(ids)
    assert {i: [o.status for o in outcomes.get(i, [])] for i in ids} == {
        started["id"]: ["approved"],
        other["id"]: ["canceled"],
        third["id"]: ["canceled"],
    }
    assert len(cluster.received) == 3
    # Each SMS went out once, from the replica that started it.
    assert [m.account_sid for m in twilio.messages_to(phone(1))] == [a.account_sid]
    assert [m.account_sid for m in twilio.messages_to(phone(3))] == [b.account_sid]


async def test_codes_at_once_on_every_replica_decide_once_and_never_overspend(
    make_replicas: MakeReplicas,
) -> None:
    cluster = await make_replicas(3)
    replicas = cluster.replicas
    shuffle = random.Random(20)
    rounds = []
    for n in range(6):
        # Started on each replica in turn; codes right and wrong in a random order, on all three.
        started = await cluster.start(replicas[n % 3], phone(100 + n))
        code = (await cluster.twilio.wait_for_message(phone(100 + n))).code or ""
        rights = 1 + n % 4  # 1 to 4 right codes among the 20
        guesses = [code] * rights + [wrong(code)] * (20 - rights)
        shuffle.shuffle(guesses)
        rounds.append((started["id"], code, guesses))

    async def one_round(verification_id: str, code: str, guesses: list[str]) -> None:
        answers = await asyncio.gather(
            *(
                cluster.code(replicas[i % 3], verification_id, guess)
                for i, guess in enumerate(guesses)
            )
        )
        decided = [
            (guess, body)
            for guess, (status, body) in zip(guesses, answers, strict=True)
            if status == 200
        ]
        refused = [(status, body) for status, body in answers if status != 200]
        assert all(status == 409 for status, _ in refused), refused
        final = await cluster.get(replicas[0], verification_id)
        row = await cluster.row(verification_id)
        approvals = [guess for guess, body in decided if body["status"] == "approved"]
        wrongs = [body for guess, body in decided if guess != code]
        # Each code answered 200 spent one attempt, exactly: none lost, none counted twice.
        assert len(decided) == row["attempts"], (decided, row)
        assert len(wrongs) == MAX_ATTEMPTS - final["attempts_left"] <= MAX_ATTEMPTS, decided
        assert approvals == [code] * len(approvals)
        assert all(body["status"] == "approved" for guess, body in decided if guess == code)
        # One decision, told to one caller, and it is the final status.
        finals = [body["status"] for _, body in decided if body["status"] != "pending"]
        assert finals == [final["status"]], decided
        if final["status"] == "max_attempts_reached":
            assert approvals == [], "approved after max_attempts_reached"
            assert len(wrongs) == MAX_ATTEMPTS
        else:
            assert final["status"] == "approved", final
        for _, body in refused:
            assert body["verification"]["status"] == final["status"], body

    for verification_id, code, guesses in rounds:
        await one_round(verification_id, code, guesses)

    ids = [verification_id for verification_id, _, _ in rounds]
    finals = {i: await cluster.get(replicas[1], i) for i in ids}
    outcomes = await cluster.outcomes(ids)
    for verification_id in ids:
        assert [o.status for o in outcomes.get(verification_id, [])] == [
            finals[verification_id]["status"]
        ], verification_id
        row = await cluster.row(verification_id)
        assert outcomes[verification_id][0].body["attempts"] == row["attempts"]
    assert len(cluster.received) == len(ids)


async def test_an_idempotency_key_on_two_replicas_at_once_makes_one_verification(
    make_replicas: MakeReplicas,
) -> None:
    cluster = await make_replicas(3)
    a, b, c = cluster.replicas
    twilio = cluster.twilio
    for n in range(5):
        to, key = phone(200 + n), f"signup-{n}"
        answers = await asyncio.gather(
            *(
                cluster.call(
                    replica,
                    "POST",
                    "/verifications",
                    json={"phone": to},
                    headers={"Idempotency-Key": key},
                )
                for replica in (a, b)
            )
        )
        assert [status for status, _, _ in answers] == [202, 202], answers
        assert answers[0][2]["id"] == answers[1][2]["id"], answers
        replayed = sorted(headers.get("Idempotent-Replayed", "") for _, headers, _ in answers)
        assert replayed == ["", "true"], replayed  # one made it, the other is its replay
        # And once more, later, on the third.
        status, headers, view = await cluster.call(
            c, "POST", "/verifications", json={"phone": to}, headers={"Idempotency-Key": key}
        )
        assert (status, headers.get("Idempotent-Replayed"), view["id"]) == (
            202,
            "true",
            answers[0][2]["id"],
        )
        await twilio.wait_for_message(to)
    await asyncio.sleep(0.3)  # time for a second SMS, were one sent
    for n in range(5):
        assert len(twilio.messages_to(phone(200 + n))) == 1, n
    count = await cluster.connection().fetchval(
        "SELECT count(*) FROM verifications WHERE phone = ANY($1::text[])",
        [phone(200 + n) for n in range(5)],
    )
    assert count == 5


async def test_a_start_on_another_replica_resends_the_pending_verification(
    make_replicas: MakeReplicas,
) -> None:
    cluster = await make_replicas(3)
    a, b, c = cluster.replicas
    twilio = cluster.twilio
    first = await cluster.start(a, phone(300))
    code = (await twilio.wait_for_message(phone(300))).code

    status, headers, again = await cluster.call(
        b, "POST", "/verifications", json={"phone": phone(300)}, headers={"Idempotency-Key": "k2"}
    )
    assert (status, headers.get("Idempotent-Replayed")) == (202, "false"), again
    assert again["id"] == first["id"]
    resent = await twilio.wait_for_message(phone(300))
    assert resent.code == code  # the same code, sent again
    # The key now names that verification, on any replica.
    status, headers, replay = await cluster.call(
        c, "POST", "/verifications", json={"phone": phone(300)}, headers={"Idempotency-Key": "k2"}
    )
    assert (status, headers.get("Idempotent-Replayed"), replay["id"]) == (202, "true", first["id"])

    pending = await cluster.connection().fetch(
        "SELECT id, holder FROM verifications WHERE phone = $1 AND status = 'pending'", phone(300)
    )
    assert [(row["id"], row["holder"]) for row in pending] == [(first["id"], "a")]

    status, view = await cluster.code(c, first["id"], code or "")
    assert (status, view["status"]) == (200, "approved"), view
    # A fresh start for the number on a third replica: a new verification, held there.
    fresh = await cluster.start(c, phone(300))
    assert fresh["id"] != first["id"]
    assert (await cluster.row(fresh["id"]))["holder"] == "c"

    # Starts for one number on all three at once: one verification, whoever made it.
    answers = await asyncio.gather(
        *(cluster.call(r, "POST", "/verifications", json={"phone": phone(301)}) for r in (a, b, c))
    )
    assert [status for status, _, _ in answers] == [202, 202, 202], answers
    assert len({view["id"] for _, _, view in answers}) == 1, answers
    count = await cluster.connection().fetchval(
        "SELECT count(*) FROM verifications WHERE phone = $1", phone(301)
    )
    assert count == 1


async def test_attempts_spent_on_one_replica_stay_spent_whoever_decides_last(
    make_replicas: MakeReplicas,
) -> None:
    # The holder's task (a's) last saw each verification with all its attempts; a wrong code on b
    # spends one in the database. Whatever ends it then, on a, the spent attempt must stay spent:
    # in the final view, the row, and the outcome.
    cluster = await make_replicas(2, ttl_seconds=3)
    a, b = cluster.replicas
    ended = {}
    for n, how in enumerate(["approved", "canceled", "expired"]):
        started = await cluster.start(a, phone(400 + n))
        code = (await cluster.twilio.wait_for_message(phone(400 + n))).code or ""
        status, view = await cluster.code(b, started["id"], wrong(code))
        assert (status, view["attempts_left"]) == (200, MAX_ATTEMPTS - 1), view
        if how == "approved":
            status, view = await cluster.code(a, started["id"], code)
            assert (status, view["status"]) == (200, "approved"), view
            assert view["attempts_left"] == MAX_ATTEMPTS - 1, view
        elif how == "canceled":
            status, view = await cluster.cancel(a, started["id"])
            assert (status, view["status"]) == (200, "canceled"), view
            assert view["attempts_left"] == MAX_ATTEMPTS - 1, view
        ended[started["id"]] = how
    finals = await cluster.wait_final(b, ended)
    outcomes = await cluster.outcomes(ended)
    for verification_id, how in ended.items():
        row = await cluster.row(verification_id)
        spent = 2 if how == "approved" else 1  # the wrong code, and the right one if any
        assert finals[verification_id]["status"] == how
        assert finals[verification_id]["attempts_left"] == MAX_ATTEMPTS - 1, (how, row)
        assert (row["attempts"], row["attempts_left"]) == (spent, MAX_ATTEMPTS - 1), (how, row)
        assert [o.body["attempts"] for o in outcomes[verification_id]] == [spent], how


async def test_twilio_clients_find_a_number_on_every_replica(make_replicas: MakeReplicas) -> None:
    """The Verify v2 surface names verifications by number: whichever replica holds it."""
    cluster = await make_replicas(3)
    a, b, c = cluster.replicas
    sdks = {r.name: Sdk(r.url, API_KEY) for r in (a, b, c)}
    to = phone(400)

    created = await sdks["a"](lambda: sdks["a"].service.verifications.create(to=to, channel="sms"))
    code = (await cluster.twilio.wait_for_message(to)).code or ""
    # A create on another replica resends it, and the send is listed on every replica.
    again = await sdks["b"](lambda: sdks["b"].service.verifications.create(to=to, channel="sms"))
    assert again.sid == created.sid
    assert (await cluster.twilio.wait_for_message(to)).code == code
    for name in ("a", "c"):
        sdk = sdks[name]
        fetched = await sdk(lambda sdk=sdk: sdk.service.verifications(to).fetch())  # type: ignore[misc]
        assert (fetched.sid, len(fetched.send_code_attempts)) == (created.sid, 2), name

    check = sdks["c"].service.verification_checks
    approved = await sdks["c"](lambda: check.create(to=to, code=code))
    assert (approved.sid, approved.status) == (created.sid, "approved")
    outcomes = await cluster.outcomes([created.sid])
    assert [o.status for o in outcomes[created.sid]] == ["approved"]
