"""The limits' windows shared by replicas: counted in PostgreSQL, never over, whoever counts."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]

from service.store import Window
from tests.service.store.postgres.conftest import Opener

PER_PHONE = Window("phone", "+14155550100", 5, 600.0)
BUDGET = Window("budget", "*", 1000, 60.0)


async def test_a_window_counts_what_every_replica_counted(opened: Opener) -> None:
    a, b = await opened(), await opened()
    for n in range(5):
        assert await (a if n % 2 else b).tally.count([PER_PHONE, BUDGET], 1_000.0 + n) is None

    refused = await a.tally.count([PER_PHONE, BUDGET], 1_010.0)

    assert refused is not None
    index, wait = refused
    assert index == 0  # the number's window, not the budget
    # Room comes back when the oldest tenth of the window (1000 to 1060) leaves it.
    assert 0 < wait <= 600.0 - 10.0
    assert await b.tally.count([PER_PHONE, BUDGET], 1_000.0 + 661.0) is None


async def test_nothing_is_counted_when_one_window_is_full(
    opened: Opener, db: asyncpg.Connection
) -> None:
    a = await opened()
    tiny_budget = Window("budget", "*", 1, 60.0)
    assert await a.tally.count([tiny_budget], 1_000.0) is None

    # Counted in the slot of 996 to 1002 (tenths of 60 s): room at 1056, 55 s after 1001.
    assert await a.tally.count([PER_PHONE, tiny_budget], 1_001.0) == (1, 55.0)

    rows = await db.fetch("SELECT bucket, n FROM limit_counts")
    assert [r["n"] for r in rows] == [1]  # the number's window was not counted either
    assert all("+1415" not in r["bucket"] for r in rows)  # no number in the clear


async def test_uncount_gives_the_room_back(opened: Opener) -> None:
    a, b = await opened(), await opened()
    one = Window("phone", "+14155550101", 1, 600.0)
    assert await a.tally.count([one], 1_000.0) is None
    assert await b.tally.count([one], 1_001.0) is not None

    await b.tally.uncount([one], 1_000.0)

    assert await a.tally.count([one], 1_002.0) is None


async def test_replicas_counting_at_once_never_go_over(opened: Opener) -> None:
    replicas = [await opened() for _ in range(3)]
    window = Window("phone", "+14155550102", 5, 600.0)

    answers = await asyncio.gather(
        *(replicas[n % 3].tally.count([window, BUDGET], 1_000.0 + n / 100) for n in range(30))
    )

    assert sum(answer is None for answer in answers) == 5
