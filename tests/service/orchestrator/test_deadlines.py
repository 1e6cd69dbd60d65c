"""Shared deadlines: never early, on the standard loop and on uvloop (whose timers round to ms)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from service.orchestrator.deadlines import TICK, Deadlines

Runner = Callable[[Coroutine[Any, Any, None]], None]


async def _never_early() -> None:
    deadlines = Deadlines(time.time)
    now = time.time()
    whens = [now + random.uniform(0.001, 0.3) for _ in range(1000)]
    late: list[float] = []

    async def wait(when: float) -> None:
        await deadlines.at(when)
        late.append(time.time() - when)

    await asyncio.wait_for(asyncio.gather(*(wait(w) for w in whens)), 10)
    assert min(late) >= 0, f"a deadline was noticed {-min(late) * 1000:.3f} ms early"
    assert len(deadlines) == 0, "every tick's timer is gone once it has rung"


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_deadline_is_never_noticed_early(run: Runner) -> None:
    run(_never_early())


async def test_deadlines_in_one_tick_share_a_future() -> None:
    deadlines = Deadlines(time.time)
    start = (int(time.time() / TICK) + 10) * TICK  # a tick boundary 0.1 s ahead
    first = deadlines.at(start + TICK * 0.2)
    assert deadlines.at(start + TICK * 0.7) is first
    assert deadlines.at(start + TICK * 1.2) is not first
    assert len(deadlines) == 2
    await asyncio.wait_for(first, 5)
    assert time.time() >= start + TICK * 0.7
