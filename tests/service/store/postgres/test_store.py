"""The PostgreSQL store through the `Store` interface, against a real server: the behaviours the
SQLite store's tests check, and what several connections at once do to migrations and writes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from service.config import DatabaseSettings
from service.errors import StoreUnavailable
from service.models import Status
from service.outcomes import decided, outcome_of
from service.store import Decided, KeyHolder, Purged, Store, check_url, open_store
from service.store.postgres.schema import MIGRATIONS, migrate
from service.store.postgres.store import PostgresStore
from tests.service.store.postgres.conftest import Opener
from tests.support.clock import SetClock
from tests.support.process import free_port
from tests.support.verifications import verification


async def outbox(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT verification_id, status, body, created_at, sent_at FROM outbox ORDER BY seq"
    )
    return [tuple(r) for r in rows]


# -- the behaviours of the SQLite store's tests ---------------------------------------------------


async def test_finish_writes_the_outcome_it_is_given_once_at_the_store_s_clock(
    store: Store, clock: SetClock, db: asyncpg.Connection
) -> None:
    v = verification()
    await store.insert(v)
    final = replace(v, status=Status.APPROVED, attempts=1, completed_at=950.0)
    woken = []
    store.on_outcome = lambda: woken.append(True)

    assert await store.finish([Decided(final, "the body, as given")]) == {v.id}
    clock.now = 2_000.0
    again = replace(v, status=Status.CANCELED, completed_at=960.0)
    assert await store.finish([decided(again)]) == set()

    assert await outbox(db) == [(v.id, "approved", "the body, as given", 1_000.0, None)]
    assert await store.get(v.id) == final
    assert woken == [True]
    assert await store.outbox_depth() == (1, 1_000.0)


async def test_finish_applies_only_to_those_still_pending(
    store: Store, db: asyncpg.Connection
) -> None:
    done, live = verification("VEdone"), verification("VElive")
    await store.insert(done)
    await store.insert(live)
    await store.finish([decided(replace(done, status=Status.CANCELED, completed_at=950.0))])

    expired = [replace(v, status=Status.EXPIRED, completed_at=990.0) for v in (done, live)]
    assert await store.finish([decided(v) for v in expired]) == {live.id}
    rows = await outbox(db)
    assert [row[:2] for row in rows] == [(done.id, "canceled"), (live.id, "expired")]
    assert rows[1][2] == outcome_of(expired[1])


async def test_finish_keeps_the_first_decision_of_a_batch_and_its_order(
    store: Store, db: asyncpg.Connection
) -> None:
    ids = [f"VE{n:04d}" for n in range(20)]
    for vid in ids:
        await store.insert(verification(vid))
    batch = [decided(replace(verification(ids[0]), status=Status.EXPIRED, completed_at=990.0))]
    batch += [
        decided(replace(verification(vid), status=Status.CANCELED, completed_at=950.0))
        for vid in reversed(ids)
    ]

    assert await store.finish(batch) == set(ids)
    rows = await outbox(db)
    assert [row[0] for row in rows] == [ids[0], *reversed(ids[1:])]
    assert rows[0][1] == "expired"
    assert await store.outbox_depth() == (20, 1_000.0)


async def test_checkpoints_report_whether_they_applied(store: Store) -> None:
    v = verification()
    await store.insert(v)
    spent = replace(v, attempts=1, attempts_left=2)

    assert await store.attempted(v, spent)
    assert not await store.attempted(v, spent)  # the row no longer has `v`'s attempts
    assert await store.sms_sent(replace(spent, sms_sent_at=901.0, sms_id="SM1"))
    await store.finish([decided(replace(spent, status=Status.CANCELED, completed_at=950.0))])
    assert not await store.sms_sent(replace(spent, sms_sent_at=902.0, sms_id="SM2"))
    assert not await store.attempted(spent, replace(spent, attempts=2, attempts_left=1))
    assert await store.get(v.id) == replace(
        spent, status=Status.CANCELED, completed_at=950.0, sms_sent_at=901.0, sms_id="SM1"
    )


async def test_mark_sent_stamps_the_store_s_clock(
    store: Store, clock: SetClock, db: asyncpg.Connection
) -> None:
    v = verification()
    await store.insert(v)
    await store.finish([decided(replace(v, status=Status.EXPIRED, completed_at=990.0))])
    (record,) = await store.due(10, now=clock.now)
    clock.now = 1_234.5

    await store.mark_sent([record.seq])
    await store.mark_sent([record.seq])  # again: counted once

    assert (await outbox(db))[0][4] == 1_234.5
    assert await store.outbox_depth() == (0, None)
    assert await store.next_due() is None


async def test_a_verification_comes_back_as_it_was_written(store: Store) -> None:
    v = replace(
        verification(),
        reference=None,
        salt=bytes(range(256)),
        sms_sent_at=901.25,
        sms_id="SM1",
        owner="key-1",
    )
    await store.insert(v)
    other = replace(verification("VEdone"), status=Status.CANCELED, completed_at=950.0)
    await store.insert(other)

    assert await store.get(v.id) == v
    assert await store.get("VEmissing") is None
    assert await store.pending() == [v]


async def test_shorten_brings_deadlines_forward_never_back(store: Store) -> None:
    v, w = verification("VEv"), verification("VEw")
    await store.insert(v)
    await store.insert(w)

    await store.shorten([replace(v, expires_at=950.0), replace(w, expires_at=995.0)])
    await store.shorten([replace(v, expires_at=960.0), replace(v, expires_at=940.0)])
    await store.shorten([])

    assert [(x.id, x.expires_at) for x in sorted(await store.pending(), key=lambda x: x.id)] == [
        ("VEv", 940.0),
        ("VEw", 990.0),
    ]


# -- idempotency keys -----------------------------------------------------------------------------


async def test_an_idempotency_key_is_claimed_once(store: Store, db: asyncpg.Connection) -> None:
    first, second = verification("VEfirst"), verification("VEsecond")

    assert await store.insert(first, "key-1", b"digest-1") is None
    holder = await store.insert(second, "key-1", b"digest-2")
    assert isinstance(holder, KeyHolder)
    assert (holder.verification, holder.request_hash) == (first, b"digest-1")
    assert await store.get(second.id) is None  # nothing written
    assert await store.resent(second.id, 905.0, "key-1", b"digest-2") == holder
    assert await store.by_idempotency_key("key-1") == holder
    assert await store.by_idempotency_key("key-2") is None

    # A resend remembers a new key for an existing verification, and records the send.
    assert await store.resent(first.id, 905.0, "key-2", b"digest-3") is True
    resent = await store.by_idempotency_key("key-2")
    assert resent is not None
    assert (resent.verification, resent.request_hash) == (
        replace(first, resends=(905.0,)),
        b"digest-3",
    )
    # For a verification that ended, nothing is written: not the send, not the key.
    await store.finish([decided(replace(first, status=Status.CANCELED, completed_at=906.0))])
    assert await store.resent(first.id, 907.0, "key-3", b"digest-4") is False
    assert await store.by_idempotency_key("key-3") is None


async def test_a_key_whose_verification_was_purged_is_free_again(
    store: Store, db: asyncpg.Connection
) -> None:
    old, new = verification("VEold"), verification("VEnew")
    await store.insert(old, "key-1", b"old")
    await db.execute("DELETE FROM verifications WHERE id = $1", old.id)

    assert await store.by_idempotency_key("key-1") is None
    assert await store.insert(new, "key-1", b"new") is None
    holder = await store.by_idempotency_key("key-1")
    assert holder is not None
    assert (holder.verification, holder.request_hash) == (new, b"new")


async def test_replicas_claiming_one_key_at_once_create_one_verification(
    opened: Opener, db: asyncpg.Connection
) -> None:
    replicas: list[Store] = [await opened() for _ in range(3)]
    starts = [verification(f"VE{n}") for n in range(12)]

    answers = await asyncio.gather(
        *(replicas[n % 3].insert(v, "key-1", v.id.encode()) for n, v in enumerate(starts))
    )

    winners = [v for v, answer in zip(starts, answers, strict=True) if answer is None]
    assert len(winners) == 1
    assert {a.verification.id for a in answers if isinstance(a, KeyHolder)} == {winners[0].id}
    assert await db.fetchval("SELECT count(*) FROM verifications") == 1


# -- several writers on one row -------------------------------------------------------------------


async def test_replicas_finishing_one_verification_decide_it_once(
    opened: Opener, db: asyncpg.Connection
) -> None:
    replicas: list[Store] = [await opened() for _ in range(3)]
    v = verification()
    await replicas[0].insert(v)
    finals = [Status.APPROVED, Status.CANCELED, Status.EXPIRED] * 4

    answers = await asyncio.gather(
        *(
            replicas[n % 3].finish([decided(replace(v, status=s, completed_at=950.0 + n))])
            for n, s in enumerate(finals)
        )
    )

    assert sorted(len(a) for a in answers) == [0] * 11 + [1]
    (row,) = await outbox(db)
    stored = await replicas[1].get(v.id)
    assert stored is not None
    assert row[1] == stored.status.value
    assert row[2] == outcome_of(stored)


async def test_concurrent_wrong_codes_spend_each_attempt_once(
    opened: Opener,
) -> None:
    replicas: list[Store] = [await opened() for _ in range(2)]
    v = verification()
    await replicas[0].insert(v)
    spent = replace(v, attempts=1, attempts_left=2)

    answers = await asyncio.gather(*(replicas[n % 2].attempted(v, spent) for n in range(10)))

    assert sorted(answers) == [False] * 9 + [True]


# -- the outbox -----------------------------------------------------------------------------------


async def test_a_refused_record_waits_its_back_off_behind_the_others(
    store: Store, clock: SetClock, db: asyncpg.Connection
) -> None:
    ids = ["VE1", "VE2", "VE3"]
    for vid in ids:
        v = verification(vid)
        await store.insert(v)
        await store.finish([decided(replace(v, status=Status.EXPIRED, completed_at=990.0))])
    first, second, third = await store.due(10, now=1_000.0)
    assert [r.verification_id for r in (first, second, third)] == ids
    assert first.attempts == 0
    assert json.loads(first.body)["id"] == "VE1"

    await store.defer(first.seq, until=1_500.0, error="refused " + "x" * 1_000)
    assert [r.verification_id for r in await store.due(10, now=1_000.0)] == ["VE2", "VE3"]
    assert await store.next_due() == 0.0  # the others are due now
    await store.mark_sent([second.seq, third.seq])
    assert await store.next_due() == 1_500.0
    assert await store.due(10, now=1_499.0) == []

    (again,) = await store.due(10, now=1_500.0)
    assert (again.verification_id, again.attempts) == ("VE1", 1)
    error = await db.fetchval("SELECT last_error FROM outbox WHERE seq = $1", first.seq)
    assert len(error) == 500
    await store.mark_sent([again.seq])
    await store.defer(again.seq, until=2_000.0, error="too late")  # sent: left as it is
    assert await store.next_due() is None
    assert await store.outbox_depth() == (0, None)


async def test_due_reads_those_due_again_first_and_at_most_limit(store: Store) -> None:
    for n in range(5):
        v = verification(f"VE{n}")
        await store.insert(v)
        await store.finish([decided(replace(v, status=Status.EXPIRED, completed_at=990.0))])
    records = await store.due(10, now=1_000.0)
    await store.defer(records[3].seq, until=1_100.0, error="refused")
    await store.defer(records[1].seq, until=1_200.0, error="refused")

    assert [r.verification_id for r in await store.due(3, now=2_000.0)] == ["VE3", "VE1", "VE0"]
    assert [r.verification_id for r in await store.due(10, now=1_150.0)] == [
        "VE3",
        "VE0",
        "VE2",
        "VE4",
    ]


async def test_the_unsent_count_is_read_again_at_open(opened: Opener, clock: SetClock) -> None:
    first: Store = await opened(replica="one")
    for vid in ("VE1", "VE2"):
        v = verification(vid)
        await first.insert(v)
        await first.finish([decided(replace(v, status=Status.EXPIRED, completed_at=990.0))])
    (sent, _) = await first.due(10, now=clock.now)
    await first.mark_sent([sent.seq])

    again: Store = await opened(replica="one")  # its restart: the same name
    assert await again.outbox_depth() == (1, 1_000.0)


# -- retention ------------------------------------------------------------------------------------


async def test_purge_masks_deletes_and_drops_as_sqlite_does(
    store: Store, clock: SetClock, db: asyncpg.Connection
) -> None:
    sent, unsent, live = verification("VEsent"), verification("VEunsent"), verification("VElive")
    for v in (sent, unsent, live):
        await store.insert(v, f"key-{v.id}", b"d")
    for v in (sent, unsent):
        await store.finish([decided(replace(v, status=Status.EXPIRED, completed_at=990.0))])
    records = await store.due(10, now=clock.now)
    await store.mark_sent([records[0].seq])
    await db.execute("UPDATE outbox SET body = 'not json' WHERE verification_id = $1", sent.id)

    # Masking only: numbers of verifications finished before 995, in the outbox too.
    masked = await store.purge(finished_before=0.0, redact_before=995.0, sent_before=0.0)
    assert masked == Purged(touched=2, dropped=0)
    by_id = {v.id: await store.get(v.id) for v in (sent, unsent, live)}
    assert {k: v.phone for k, v in by_id.items() if v} == {
        "VEsent": _masked(sent.phone),
        "VEunsent": _masked(unsent.phone),
        "VElive": live.phone,
    }
    bodies = dict(await db.fetch("SELECT verification_id, body FROM outbox"))
    assert bodies["VEsent"] == "not json"  # left as it was, without failing the sweep
    assert json.loads(bodies["VEunsent"])["to"] == _masked(unsent.phone)
    assert json.loads(bodies["VEunsent"])["id"] == "VEunsent"
    assert await store.purge(finished_before=0.0, redact_before=995.0, sent_before=0.0) == (
        Purged(0, 0)
    )

    # Everything: the sent outcome and the unsent one go, then both verifications, and keys.
    purged = await store.purge(finished_before=1_000.5, redact_before=0.0, sent_before=1_001.0)
    assert purged.dropped == 1
    assert await store.outbox_depth() == (0, None)
    assert await outbox(db) == []
    assert [v.id for v in await store.pending()] == ["VElive"]
    assert await store.get(sent.id) is None
    assert await store.get(unsent.id) is None
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0  # all before 1000.5
    assert purged.touched == 1 + 1 + 2 + 3


# -- migrations -----------------------------------------------------------------------------------


async def test_migrations_run_once_however_many_replicas_start_at_once(url: str) -> None:
    connections = [await asyncpg.connect(url) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(migrate(c) for c in connections))
        assert versions == [len(MIGRATIONS)] * 4
        assert await migrate(connections[0]) == len(MIGRATIONS)  # again: nothing to do
        assert await connections[0].fetch("SELECT version FROM schema_version") == [
            (len(MIGRATIONS),)
        ]
    finally:
        for c in connections:
            await c.close()


async def test_stores_opened_at_once_share_one_schema(
    opened: Opener, db: asyncpg.Connection
) -> None:
    stores: list[Store] = list(await asyncio.gather(*(opened() for _ in range(3))))
    await stores[0].insert(verification())

    assert await stores[2].get("VEaaaa") == verification()
    assert await db.fetchval("SELECT count(*) FROM schema_version") == 1


# -- failures, health, and the choice by URL ------------------------------------------------------


async def cut_off(db: asyncpg.Connection, *, state: str = "idle") -> None:
    """End the store's server connections (in `state`), and let the store hear of it."""
    await db.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE application_name = 'verification-service' AND state = $1",
        state,
    )
    await asyncio.sleep(0.2)


async def test_an_idle_connection_lost_is_replaced_unseen(
    store: Store, db: asyncpg.Connection
) -> None:
    v = verification()
    await store.insert(v)
    await cut_off(db)

    assert await store.sms_sent(replace(v, sms_sent_at=901.0, sms_id="SM1"))
    assert store.healthy


async def test_a_connection_lost_mid_write_is_unavailable_until_the_next_write(
    store: Store, db: asyncpg.Connection
) -> None:
    v = verification()
    await store.insert(v)
    async with db.transaction():
        await db.execute("SELECT 1 FROM verifications WHERE id = $1 FOR UPDATE", v.id)
        write = asyncio.ensure_future(store.sms_sent(replace(v, sms_sent_at=901.0, sms_id="SM1")))
        await asyncio.sleep(0.2)  # waiting for the row's lock
        await cut_off(db, state="active")
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await write
    assert not store.healthy

    assert await store.sms_sent(replace(v, sms_sent_at=901.0, sms_id="SM1"))
    assert store.healthy


async def test_a_row_locked_too_long_is_unavailable(
    url: str, clock: SetClock, db: asyncpg.Connection
) -> None:
    store = await PostgresStore.open(url, clock=clock, lock_timeout_ms=100, min_size=1)
    try:
        v = verification()
        await store.insert(v)
        async with db.transaction():
            await db.execute("SELECT 1 FROM verifications WHERE id = $1 FOR UPDATE", v.id)
            with pytest.raises(StoreUnavailable, match="LockNotAvailable"):
                await store.attempted(v, replace(v, attempts=1, attempts_left=2))
        assert not store.healthy
        assert await store.probe()
    finally:
        await store.close()


async def test_a_bug_is_raised_as_it_is(store: Store) -> None:
    v = verification()
    await store.insert(v)

    with pytest.raises(asyncpg.UniqueViolationError):
        await store.insert(replace(v, phone="+14155550199"))  # the same id twice: no retry helps
    assert store.healthy


async def test_a_read_only_database_fails_the_probe(
    store: Store, db: asyncpg.Connection, url: str
) -> None:
    name = url.rsplit("/", 1)[1]
    await db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await cut_off(db)

    assert not await store.probe()
    assert not store.healthy
    with pytest.raises(StoreUnavailable, match="ReadOnlySQLTransaction"):
        await store.insert(verification())
    await db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    await cut_off(db)
    assert await store.probe()
    assert store.healthy


async def test_a_server_that_is_not_there_is_unavailable(clock: SetClock) -> None:
    with pytest.raises(StoreUnavailable):
        await PostgresStore.open(
            f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", clock=clock
        )


async def test_a_closed_store_refuses_writes(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.insert(verification())


async def test_release_sends_nothing_to_the_server(store: Store, db: asyncpg.Connection) -> None:
    # A session setting survives a release: no RESET ALL (nor the rest of the default reset).
    assert isinstance(store, PostgresStore)
    async with store._pool.acquire() as connection:
        await connection.execute("SET application_name = 'marked'")
        pid = connection.get_server_pid()
    async with store._pool.acquire() as connection:
        assert connection.get_server_pid() == pid
        assert await connection.fetchval("SHOW application_name") == "marked"


async def test_open_store_picks_postgres_by_url(url: str) -> None:
    check_url("postgres://user:secret@db/verify")
    check_url(url)
    opened = await open_store(DatabaseSettings(url=url), clock=lambda: 1.0)
    try:
        assert isinstance(opened, PostgresStore)
        assert await opened.pending() == []
    finally:
        await opened.close()


def _masked(phone: str) -> str:
    return f"{phone[:3]}*****{phone[-2:]}"


async def test_a_number_s_verification_its_resends_and_its_spent_end(store: Store) -> None:
    v = replace(verification(), owner="key-1", service="VA" + "1" * 32, code_length=4)
    await store.insert(v)
    assert await store.get(v.id) == v
    assert await store.pending_for("key-1", v.phone) == v
    assert await store.pending_for("key-2", v.phone) is None

    assert await store.resent(v.id, 905.5)
    assert await store.resent(v.id, 910.25)
    resent = replace(v, resends=(905.5, 910.25))
    assert await store.get(v.id) == resent

    spent = replace(
        resent,
        status=Status.MAX_ATTEMPTS_REACHED,
        attempts=3,
        attempts_left=0,
        completed_at=920.0,
    )
    await store.finish([decided(spent)])
    assert not await store.resent(v.id, 930.0)  # ended: nothing more is recorded
    assert await store.pending_for("key-1", v.phone) is None
    # Until its deadline, the number's spent verification is what a check of it is told.
    assert await store.spent_for("key-1", v.phone, v.expires_at - 1) == spent
    assert await store.spent_for("key-1", v.phone, v.expires_at) is None
    assert await store.spent_for("key-2", v.phone, v.expires_at - 1) is None
