"""Deadlines: one loop timer for all the waiting verifications, instead of one each.

A waiting verification is a task suspended on one future, its waiter, which the first of two
things resolves: a command arriving in its inbox, or its deadline here. Whichever comes first
decides; the other is withdrawn (`withdraw`), so a deadline lost to a code leaves nothing behind.

A loop timer costs 200 to 400 bytes (uvloop's more than asyncio's) and arming one a few
microseconds; `asyncio.wait` on the waiter and a timer another kilobyte and twice that time. At a
million waiting, that was a quarter of their memory and most of a restart. So deadlines are kept
in ticks of time: the waiters due in one tick are resolved together when it ends, and one loop
timer waits for the soonest tick. A deadline is therefore noticed up to one tick late, never early
(unless the wall clock is set back while it waits: the time it had left is what counts).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time

from service.models import Clock

#: Seconds; a verification is decided at most this late after its deadline.
TICK = 0.01

Waiter = asyncio.Future[None]


class Deadlines:
    """Resolves waiters once a moment of `clock` time has passed."""

    def __init__(self, clock: Clock = time.time, tick: float = TICK) -> None:
        self._clock = clock
        self._tick = tick
        #: The waiters of each tick: one alone, most of the time, else a set of them.
        self._ticks: dict[int, Waiter | set[Waiter]] = {}
        #: (loop time it is due, tick), soonest first: the wall clock's distance to a tick is
        #: turned into the loop's monotonic time once, when its first waiter comes, so a wall
        #: clock set back later does not hold it back. A tick whose waiters were all withdrawn
        #: stays until it comes, or until such ticks are most (`withdraw`).
        self._soonest: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    def __len__(self) -> int:
        """Ticks with a waiter due."""
        return len(self._ticks)

    def wake(self, when: float, waiter: Waiter) -> int:
        """Resolve `waiter` at the end of the tick holding `when`; the tick, for `withdraw`."""
        tick = math.ceil(when / self._tick)
        waiters = self._ticks.get(tick)
        if waiters is None:
            self._ticks[tick] = waiter
            loop = asyncio.get_running_loop()
            due = loop.time() + max(0.0, tick * self._tick - self._clock())
            heapq.heappush(self._soonest, (due, tick))
            if self._timer is None or due < self._timer_due:
                self._arm()
        elif isinstance(waiters, set):
            waiters.add(waiter)
        else:
            self._ticks[tick] = {waiters, waiter}
        return tick

    def withdraw(self, tick: int, waiter: Waiter) -> None:
        """Forget `waiter`, which something else resolved first (or its tick has rung)."""
        waiters = self._ticks.get(tick)
        if waiters is waiter:
            del self._ticks[tick]
        elif isinstance(waiters, set):
            waiters.discard(waiter)
            if not waiters:
                del self._ticks[tick]
        # Most deadlines are withdrawn (a code came first): their ticks go, in one pass, before
        # they outnumber the live ones, or a long TTL would keep them by the million.
        if len(self._soonest) > 2 * len(self._ticks) + 1024:
            self._soonest = [(due, t) for due, t in self._soonest if t in self._ticks]
            heapq.heapify(self._soonest)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._soonest and self._soonest[0][1] not in self._ticks:
            heapq.heappop(self._soonest)  # every waiter of it withdrawn
        if self._soonest:
            self._timer_due = self._soonest[0][0]
            self._timer = asyncio.get_running_loop().call_at(self._timer_due, self._ring)

    def _ring(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        while self._soonest and self._soonest[0][0] <= loop.time():
            _, tick = heapq.heappop(self._soonest)
            # uvloop rounds timers to the millisecond, so one can come a little early by the
            # wall clock: that tick waits the rest. More than a tick early means the wall clock
            # was set back; the monotonic time asked for has passed, and that is what counts.
            early = tick * self._tick - self._clock()
            if 0 < early <= self._tick and tick in self._ticks:
                heapq.heappush(self._soonest, (loop.time() + early, tick))
                continue
            waiters = self._ticks.pop(tick, None)
            for waiter in waiters if isinstance(waiters, set) else (waiters,):
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        self._arm()
