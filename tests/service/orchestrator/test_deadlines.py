"""Deadlines: never early, on the standard loop and on uvloop (whose timers round to ms), never
lost, and nothing left of one withdrawn."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from service.orchestrator.deadlines import TICK, Deadlines

Runner = Callable[[Coroutine[Any, Any, None]], None]


async def _never_early() -> None:
    # A collection pauses the loop, not the deadlines: in a process that has run the suite's
    # other tests a full one has taken 400 ms. The conftest freezes what collection imported
    # (then 1-3 ms early in a run), but what later tests leave behind is walked again.
    gc.collect()
    gc.disable()
    try:
        with _Stalls(asyncio.get_running_loop()) as stalls:
            await asyncio.sleep(0.01)  # the watch has begun
            late, deadlines = await _wait_for_many()
    finally:
        gc.enable()
    assert min(late) >= 0, f"a deadline was noticed {-min(late) * 1000:.3f} ms early"
    # A loop that did not run (a busy machine) delays anything; beyond that, at most a tick
    # (and uvloop's rounding to the millisecond) late.
    allowed = TICK + 2 * stalls.longest + 0.015
    assert max(late) < allowed, (
        f"a deadline was noticed {max(late) * 1000:.3f} ms late"
        f" (the loop stalled {stalls.longest * 1000:.1f} ms at most)"
    )
    assert len(deadlines) == 0, "every tick is gone once it has rung"


async def _wait_for_many() -> tuple[list[float], Deadlines]:
    """How late each of 1,000 deadlines within the next 0.3 s was noticed."""
    deadlines = Deadlines(time.time)
    loop = asyncio.get_running_loop()
    now = time.time()
    whens = [now + random.uniform(0.001, 0.3) for _ in range(1000)]
    waiters = [loop.create_future() for _ in whens]
    late: list[float] = []

    async def wait(when: float, waiter: asyncio.Future[None]) -> None:
        deadlines.wake(when, waiter)
        await waiter
        late.append(time.time() - when)
        # Ticks ring in order, none skipped: every deadline a tick before this one has rung.
        earlier = [
            w for t, w in zip(whens, waiters, strict=True) if t < when - TICK and not w.done()
        ]
        assert not earlier, f"{len(earlier)} earlier deadlines had not rung"

    gathered = asyncio.gather(*(wait(t, w) for t, w in zip(whens, waiters, strict=True)))
    await asyncio.wait_for(gathered, 10)
    return late, deadlines


class _Stalls:
    """The longest the loop went without running anything, while this watches: a thread hands
    it a callback every 2 ms and the gaps between their runs are timed (a thread cannot hand one
    while the loop holds the GIL, so the gaps, not each callback's wait, tell a stall)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.longest = 0.0
        self._last: float | None = None
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Stalls:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self._loop.call_soon_threadsafe(self._ran)

    def _ran(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.longest = max(self.longest, now - self._last)
        self._last = now


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_deadline_is_never_noticed_early(run: Runner) -> None:
    run(_never_early())


async def test_deadlines_in_one_tick_ring_together_and_a_later_one_after() -> None:
    deadlines = Deadlines(time.time)
    loop = asyncio.get_running_loop()
    start = (int(time.time() / TICK) + 10) * TICK  # a tick boundary 0.1 s ahead
    first, second, later = (loop.create_future() for _ in range(3))
    deadlines.wake(start + TICK * 0.2, first)
    deadlines.wake(start + TICK * 0.7, second)
    deadlines.wake(start + TICK * 1.2, later)
    assert len(deadlines) == 2
    await asyncio.wait_for(first, 5)
    assert second.done() and not later.done()
    assert time.time() >= start + TICK * 0.7
    await asyncio.wait_for(later, 5)
    assert time.time() >= start + TICK * 1.2


async def test_a_withdrawn_deadline_leaves_its_tick_mates_alone_and_nothing_behind() -> None:
    deadlines = Deadlines(time.time)
    loop = asyncio.get_running_loop()
    when = time.time() + 0.05
    lost, kept, alone = (loop.create_future() for _ in range(3))
    tick = deadlines.wake(when, lost)
    deadlines.wake(when, kept)
    alone_tick = deadlines.wake(when + 0.02, alone)
    deadlines.withdraw(tick, lost)
    deadlines.withdraw(alone_tick, alone)
    assert len(deadlines) == 1
    await asyncio.wait_for(kept, 5)
    await asyncio.sleep(0.05)
    assert not lost.done() and not alone.done()
    assert len(deadlines) == 0


async def test_a_sooner_deadline_than_the_armed_one_is_not_kept_waiting_for_it() -> None:
    deadlines = Deadlines(time.time)
    loop = asyncio.get_running_loop()
    far, near = loop.create_future(), loop.create_future()
    deadlines.wake(time.time() + 30, far)
    when = time.time() + 0.03
    deadlines.wake(when, near)
    await asyncio.wait_for(near, 5)
    assert time.time() >= when and not far.done()


async def test_withdrawn_ticks_do_not_pile_up() -> None:
    # A code usually beats its deadline: a long TTL must not keep every withdrawn tick.
    deadlines = Deadlines(time.time)
    loop = asyncio.get_running_loop()
    now = time.time()
    for n in range(100_000):
        waiter = loop.create_future()
        deadlines.withdraw(deadlines.wake(now + 60 + n * TICK, waiter), waiter)
    assert len(deadlines) == 0
    assert len(deadlines._soonest) <= 1024 + 1


async def test_a_clock_set_back_while_it_waits_does_not_hold_a_deadline_back() -> None:
    # The time left when it began waiting is what counts: a code must not outlive its TTL
    # because an NTP step moved the wall clock back.
    offset = [0.0]
    deadlines = Deadlines(lambda: time.time() - offset[0])
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    began = time.monotonic()
    deadlines.wake(time.time() + 0.05, waiter)
    offset[0] = 2.0  # set back by 2 s
    await asyncio.wait_for(waiter, 5)
    assert 0.05 <= time.monotonic() - began < 1.0


async def test_a_clock_a_little_behind_the_timer_waits_the_rest() -> None:
    # uvloop's timers round to the millisecond: a tick is never rung before its wall-clock time.
    offset = [0.0]
    deadlines = Deadlines(lambda: time.time() - offset[0])
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    when = time.time() + 0.05
    deadlines.wake(when, waiter)
    offset[0] = TICK / 2
    await asyncio.wait_for(waiter, 5)
    assert time.time() - offset[0] >= when
