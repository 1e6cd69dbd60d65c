"""Deadlines: one shared timer per tick of time, instead of one timer per waiting verification.

A loop timer costs 200 to 400 bytes (uvloop's more than asyncio's); with 100,000 verifications
waiting, that would be a tenth of their memory, and arming it a good part of a restart. So the
verifications whose deadlines fall in the same tick share one future, resolved by one loop timer at
the end of the tick. A deadline is therefore noticed up to one tick late, never early (unless
the wall clock is set back while it waits).
"""

from __future__ import annotations

import asyncio
import math
import time

from service.models import Clock

#: Seconds; a verification is decided at most this late after its deadline.
TICK = 0.01


class Deadlines:
    """Futures resolved once a moment of `clock` time has passed; shared, so never cancel one."""

    def __init__(self, clock: Clock = time.time, tick: float = TICK) -> None:
        self._clock = clock
        self._tick = tick
        self._ticks: dict[int, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        """Ticks with a timer armed."""
        return len(self._ticks)

    def at(self, when: float) -> asyncio.Future[None]:
        """A future resolved at the end of the tick holding `when`."""
        tick = math.ceil(when / self._tick)
        future = self._ticks.get(tick)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._ticks[tick] = loop.create_future()
            delay = max(0.0, tick * self._tick - self._clock())
            loop.call_later(delay, self._ring, tick)
        return future

    def _ring(self, tick: int) -> None:
        # uvloop rounds timers to the millisecond, so one can come a little early: wait the rest.
        # More than a tick early means the wall clock was set back; the monotonic timer has
        # waited the time asked for, and that is what counts.
        early = tick * self._tick - self._clock()
        if 0 < early <= self._tick:
            asyncio.get_running_loop().call_later(early, self._ring, tick)
            return
        future = self._ticks.pop(tick)
        if not future.done():
            future.set_result(None)
