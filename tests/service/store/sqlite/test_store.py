"""The SQLite store through the `Store` interface: conditional writes, its clock, the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from service.models import Status
from service.outcomes import decided, outcome_of
from service.store import Decided, KeyHolder, Store
from service.store.sqlite.store import SqliteStore
from tests.support.clock import SetClock
from tests.support.database import database
from tests.support.verifications import verification


@pytest.fixture
async def store(tmp_path: Path, clock: SetClock) -> AsyncIterator[Store]:
    opened: Store = await SqliteStore.open(str(tmp_path / "v.db"), clock=clock)
    yield opened
    await opened.close()


def outbox(tmp_path: Path) -> list[tuple[str, str, str, float, float | None]]:
    with database(tmp_path / "v.db") as db:
        return db.execute(
            "SELECT verification_id, status, body, created_at, sent_at FROM outbox ORDER BY seq"
        ).fetchall()


async def test_finish_writes_the_outcome_it_is_given_once_at_the_store_s_clock(
    store: Store, clock: SetClock, tmp_path: Path
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

    assert outbox(tmp_path) == [(v.id, "approved", "the body, as given", 1_000.0, None)]
    assert await store.get(v.id) == final
    assert woken == [True]
    assert await store.outbox_depth() == (1, 1_000.0)


async def test_finish_applies_only_to_those_still_pending(store: Store, tmp_path: Path) -> None:
    done, live = verification("VEdone"), verification("VElive")
    await store.insert(done)
    await store.insert(live)
    await store.finish([decided(replace(done, status=Status.CANCELED, completed_at=950.0))])

    expired = [replace(v, status=Status.EXPIRED, completed_at=990.0) for v in (done, live)]
    assert await store.finish([decided(v) for v in expired]) == {live.id}
    assert [row[:2] for row in outbox(tmp_path)] == [(done.id, "canceled"), (live.id, "expired")]
    assert outbox(tmp_path)[1][2] == outcome_of(expired[1])


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


async def test_mark_sent_stamps_the_store_s_clock(
    store: Store, clock: SetClock, tmp_path: Path
) -> None:
    v = verification()
    await store.insert(v)
    await store.finish([decided(replace(v, status=Status.EXPIRED, completed_at=990.0))])
    (record,) = await store.due(10, now=clock.now)
    clock.now = 1_234.5

    await store.mark_sent([record.seq])

    assert outbox(tmp_path)[0][4] == 1_234.5
    assert await store.outbox_depth() == (0, None)
    assert await store.next_due() is None


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


async def test_a_resend_claims_its_key_only_while_pending(store: Store) -> None:
    first, second = verification("VEfirst"), verification("VEsecond")
    await store.insert(first, "key-1", b"digest-1")
    await store.insert(second)
    holder = await store.resent(second.id, 905.0, "key-1", b"digest-2")
    assert isinstance(holder, KeyHolder) and holder.verification == first
    assert (await store.get(second.id)) == second  # nothing recorded

    assert await store.resent(first.id, 905.0, "key-2", b"digest-3") is True
    claimed = await store.by_idempotency_key("key-2")
    assert claimed is not None and claimed.verification.resends == (905.0,)
    await store.finish([decided(replace(second, status=Status.CANCELED, completed_at=906.0))])
    assert await store.resent(second.id, 907.0, "key-3", b"digest-4") is False
    assert await store.by_idempotency_key("key-3") is None
