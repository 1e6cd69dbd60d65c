"""Replicas sharing one database, at the store: leases, adoption, and the fence of owner-only work.

Each store stands for a replica. A lease is made to lapse by the database's own clock moving past
it (the row's `lease_until` set back), as it would for a replica killed or paused that long.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg  # type: ignore[import-untyped]
import pytest

from service.errors import StoreUnavailable
from service.models import Status, Verification
from service.outcomes import decided
from service.store.postgres.store import PostgresStore
from tests.service.store.postgres.conftest import Opener
from tests.support.clock import SetClock
from tests.support.verifications import verification


async def lapse(db: asyncpg.Connection, store: PostgresStore) -> None:
    """End `store`'s lease in the database, as time passing unrenewed would."""
    await db.execute("UPDATE replicas SET lease_until = 1 WHERE name = $1", store.lease.name)


def expired(v: Verification) -> Verification:
    return replace(v, status=Status.EXPIRED, completed_at=v.expires_at)


async def holder(db: asyncpg.Connection, verification_id: str) -> str | None:
    name: str | None = await db.fetchval(
        "SELECT holder FROM verifications WHERE id = $1", verification_id
    )
    return name


async def test_a_verification_is_held_by_the_replica_that_started_it(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a, b = await opened(), await opened()
    await a.insert(verification("VEa"))

    assert await holder(db, "VEa") == a.lease.name
    assert [v.id for v in await a.pending()] == ["VEa"]
    assert await b.pending() == []  # recovery resumes only what a replica holds
    assert await b.lease.adopt(100) == []  # nothing to adopt while a's lease holds


async def test_a_lapsed_replicas_work_is_adopted_and_its_owner_only_writes_are_fenced(
    opened: Opener, db: asyncpg.Connection, clock: SetClock
) -> None:
    a, b = await opened(), await opened()
    v = verification("VEa")
    await a.insert(v)
    await lapse(db, a)

    assert [x.id for x in await b.lease.adopt(100)] == ["VEa"]
    assert await holder(db, "VEa") == b.lease.name
    # a believes it still holds it; the database says otherwise, in the same statement.
    sent = replace(v, sms_sent_at=950.0, sms_id="SM1")
    assert not await a.sms_sent(sent)
    assert await a.finish([decided(expired(v), fenced=True)]) == set()
    await a.shorten([replace(v, expires_at=950.0)])
    assert await a.get("VEa") == v  # none of it landed
    # The adopter's do.
    assert await b.sms_sent(sent)
    assert await b.finish([decided(expired(sent), fenced=True)]) == {"VEa"}
    assert not await a.lease.renew()  # and a learns it at its next renewal


async def test_any_replica_decides_a_code_whoever_holds_the_verification(
    opened: Opener, db: asyncpg.Connection, clock: SetClock
) -> None:
    a, b = await opened(), await opened()
    v = verification("VEa")
    await a.insert(v)
    approved = replace(v, status=Status.APPROVED, attempts=1, completed_at=950.0)

    assert await b.attempted(v, replace(v, attempts=1, attempts_left=2))
    assert not await a.attempted(v, replace(v, attempts=1, attempts_left=2))  # spent already
    assert await b.finish([decided(approved)]) == {"VEa"}
    assert await a.finish([decided(expired(v), fenced=True)]) == set()  # decided once
    # The outcome is the decider's to publish, not the holder's.
    assert [r.verification_id for r in await b.due(10, now=clock.now)] == ["VEa"]
    assert await a.due(10, now=clock.now) == []
    assert (await a.outbox_depth())[0] == 0
    assert (await b.outbox_depth())[0] == 1


async def test_a_lapsed_replicas_unsent_outcomes_are_adopted_and_it_cannot_mark_them_sent(
    opened: Opener, db: asyncpg.Connection, clock: SetClock
) -> None:
    a, b = await opened(), await opened()
    v = verification("VEa")
    await a.insert(v)
    await a.finish([decided(expired(v), fenced=True)])
    (record,) = await a.due(10, now=clock.now)
    woken: list[int] = []
    b.on_outcome = lambda: woken.append(1)
    await lapse(db, a)

    await b.lease.adopt(100)

    assert woken  # the adopter's publisher is woken for them
    assert [r.seq for r in await b.due(10, now=clock.now)] == [record.seq]
    assert (await b.outbox_depth())[0] == 1
    await a.mark_sent([record.seq])  # sent by a late: the adopter still owns the record
    await a.defer(record.seq, until=2_000.0, error="late")
    assert await db.fetchrow("SELECT sent_at, attempts FROM outbox WHERE seq = $1", record.seq) == (
        None,
        0,
    )
    await b.mark_sent([record.seq])
    assert await db.fetchval("SELECT sent_at FROM outbox WHERE seq = $1", record.seq) is not None


async def test_an_outcome_decided_by_a_lapsed_replica_is_no_ones_until_adopted(
    opened: Opener, db: asyncpg.Connection, clock: SetClock
) -> None:
    a, b = await opened(), await opened()
    v = verification("VEb")
    await b.insert(v)
    await lapse(db, a)
    canceled = replace(v, status=Status.CANCELED, completed_at=950.0)

    assert await a.finish([decided(canceled)]) == {"VEb"}  # a caller's decision: any replica

    assert await a.due(10, now=clock.now) == []
    assert await db.fetchval("SELECT holder FROM outbox WHERE verification_id = 'VEb'") is None
    await b.lease.adopt(100)
    assert [r.verification_id for r in await b.due(10, now=clock.now)] == ["VEb"]


async def test_a_replica_whose_lease_lapsed_starts_nothing(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a = await opened()
    await lapse(db, a)

    with pytest.raises(StoreUnavailable, match="lease lapsed"):
        await a.insert(verification("VEa"), "key-1", b"d")
    assert await db.fetchval("SELECT count(*) FROM verifications") == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0  # rolled back too

    assert not await a.lease.renew()
    await a.lease.join()  # joined again, under a new epoch, it starts again
    assert await a.insert(verification("VEa")) is None


async def test_a_restart_under_the_same_name_takes_its_work_back_at_once_and_fences_its_past(
    opened: Opener, db: asyncpg.Connection
) -> None:
    old = await opened(replica="host:8081")
    v = verification("VEa")
    await old.insert(v)

    new = await opened(replica="host:8081")

    assert new.lease.epoch > old.lease.epoch
    assert [x.id for x in await new.pending()] == ["VEa"]
    assert not await old.sms_sent(replace(v, sms_sent_at=950.0, sms_id="SM1"))
    assert not await old.lease.renew()


async def test_one_pending_verification_per_caller_and_number_across_replicas(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a, b = await opened(), await opened()
    first = verification("VEa")
    await a.insert(first)

    assert await b.insert(replace(first, id="VEb")) == first  # returned, nothing written
    assert await b.insert(replace(first, id="VEc", owner="other-key")) is None
    await a.finish([decided(expired(first), fenced=True)])
    assert await b.insert(replace(first, id="VEd")) is None  # ended: a new one may start


async def test_two_survivors_adopting_at_once_share_the_work_without_overlap(
    opened: Opener, db: asyncpg.Connection
) -> None:
    dead, b, c = await opened(), await opened(), await opened()
    for n in range(300):
        await dead.insert(verification(f"VE{n:04d}"))
    await lapse(db, dead)

    async def adopt_all(store: PostgresStore) -> list[str]:
        ids: list[str] = []
        while chunk := await store.lease.adopt(20):
            ids += [v.id for v in chunk]
            await asyncio.sleep(0)
        return ids

    by_b, by_c = await asyncio.gather(adopt_all(b), adopt_all(c))

    assert not set(by_b) & set(by_c)
    assert len(by_b) + len(by_c) == 300
    assert by_b and by_c  # shared, not queued behind one another
    # Nothing is left to adopt: the dead replica's row goes, and its name may come back.
    await b.lease.adopt(20)
    assert await db.fetchval("SELECT count(*) FROM replicas WHERE name = $1", dead.lease.name) == 0


async def test_closing_hands_the_work_over_at_once(opened: Opener, db: asyncpg.Connection) -> None:
    a, b = await opened(), await opened()
    await a.insert(verification("VEa"))

    await a.close()

    assert [v.id for v in await b.lease.adopt(100)] == ["VEa"]


async def test_an_epoch_is_never_given_twice_even_once_its_name_was_forgotten(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a, b = await opened(replica="host:1"), await opened()
    first = a.lease.epoch
    await a.close()
    await b.lease.adopt(100)  # nothing held: the row of host:1 is forgotten
    assert await db.fetchval("SELECT count(*) FROM replicas WHERE name = 'host:1'") == 0

    again = await opened(replica="host:1")

    assert again.lease.epoch > first


async def test_replicas_agree_on_what_the_first_one_set(opened: Opener) -> None:
    a, b = await opened(), await opened()

    assert await a.agree("code_book", "fingerprint-a") == "fingerprint-a"
    assert await b.agree("code_book", "fingerprint-b") == "fingerprint-a"  # b must refuse
    assert await b.agree("other", "x") == "x"


async def test_a_decision_from_a_state_whose_attempts_were_spent_elsewhere_does_not_apply(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a, b = await opened(), await opened()
    v = verification("VEa")
    await a.insert(v)
    spent = replace(v, attempts=1, attempts_left=2)
    assert await b.attempted(v, spent)  # a wrong code, on b

    # a's deadline, decided from its copy: it would erase b's attempt from the record.
    assert await a.finish([decided(expired(v), fenced=True, before=v.attempts)]) == set()
    assert await a.lease.holds("VEa")  # still a's: a decides again, on the row as it is
    assert await a.finish([decided(expired(spent), fenced=True, before=1)]) == {"VEa"}
    assert await db.fetchrow(
        "SELECT attempts, attempts_left FROM verifications WHERE id = 'VEa'"
    ) == (1, 2)
    assert not await b.lease.holds("VEa")


async def test_the_holder_is_told_of_what_another_replica_decided_once(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a, b = await opened(), await opened()
    for vid in ("VEa", "VEb"):
        await a.insert(verification(vid))
    canceled = replace(verification("VEa"), status=Status.CANCELED, completed_at=950.0)
    await b.finish([decided(canceled)])
    await a.finish([decided(expired(verification("VEb")), fenced=True)])  # a's own: not told

    assert await a.lease.decided_elsewhere() == ["VEa"]
    assert await a.lease.decided_elsewhere() == []
    assert await b.lease.decided_elsewhere() == []
