"""Limits on starts: the defences against SMS pumping and runaway callers.

Every start that would send an SMS passes `admit` first: the destination must be allowed (its
country and number type: `service.destinations`), the number must not have had too many SMS lately
(Twilio Verify's 5 in 10 minutes), the caller's API key must be under its rate, and the whole
service under its SMS budget. Alone on its database, a process keeps the windows in memory
(`MemoryTally`): a restart forgets them, which errs on the side of the people waiting for a code.
Replicas sharing a database count them there (`Store.tally`), so that the limits hold across them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from service.config import LimitSettings
from service.destinations import Destinations
from service.errors import ConfigError, RateLimited, Unprocessable
from service.models import Clock
from service.observers import IGNORED, Observer
from service.store import Tally, Window

#: Windows allowing at most this many events keep them in a tuple: a deque costs 600 bytes even
#: empty, and the per-number window has an entry for every verification still waiting.
COMPACT_LIMIT = 16


class SlidingWindow:
    """At most `limit` events per `window` seconds for each key."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ConfigError(
                f"A limit needs at least 1 event in a positive window: {limit}/{window}s."
            )
        self.limit = limit
        self.window = window
        self._compact = limit <= COMPACT_LIMIT
        #: Each key's latest events, oldest first: at most `limit` of them.
        self._events: dict[str, tuple[float, ...] | deque[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may have another event; 0 if it may now."""
        events = self._events.get(key)
        if events is None:
            return 0.0
        cutoff = now - self.window
        if isinstance(events, deque):
            while events and events[0] <= cutoff:
                events.popleft()
        if not events or events[-1] <= cutoff:
            del self._events[key]
            return 0.0
        if len(events) < self.limit:
            return 0.0
        return max(0.0, events[0] + self.window - now)

    def add(self, key: str, now: float) -> None:
        if self._compact:
            self._events[key] = (*self._events.get(key, ()), now)[-self.limit :]
        else:
            events = self._events.get(key)
            if not isinstance(events, deque):
                events = self._events[key] = deque(maxlen=self.limit)
            events.append(now)

    def remove(self, key: str, at: float) -> None:
        """Take back the event `add(key, at)` counted."""
        events = self._events.get(key)
        if events is None or at not in events:
            return
        if isinstance(events, deque):
            events.remove(at)
            return
        position = events.index(at)
        self._events[key] = events[:position] + events[position + 1 :]

    def sweep(self, now: float) -> None:
        """Forget keys with no event in the window, so memory follows recent traffic only."""
        for key in [k for k, e in self._events.items() if not e or e[-1] <= now - self.window]:
            del self._events[key]


class MemoryTally:
    """The `Tally` of a process alone on its database: one `SlidingWindow` per window name."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._windows: dict[str, SlidingWindow] = {}
        self._last_sweep = clock()

    async def count(self, windows: Sequence[Window], now: float) -> tuple[int, float] | None:
        self._sweep(now)
        kept = [self._window(w) for w in windows]
        for index, (window, w) in enumerate(zip(kept, windows, strict=True)):
            wait = window.wait(w.key, now)
            if wait > 0:
                return index, wait
        for window, w in zip(kept, windows, strict=True):
            window.add(w.key, now)
        return None

    async def uncount(self, windows: Sequence[Window], at: float) -> None:
        for w in windows:
            self._window(w).remove(w.key, at)

    def _window(self, w: Window) -> SlidingWindow:
        window = self._windows.get(w.name)
        if window is None or (window.limit, window.window) != (w.limit, w.seconds):
            window = self._windows[w.name] = SlidingWindow(w.limit, w.seconds)
        return window

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for window in self._windows.values():
            window.sweep(now)


#: Why a window refuses, by its name: the refusal's code, and what the caller is told.
REFUSALS = {
    "phone": ("rate_limited_phone", "Too many codes sent to this number."),
    "key": ("rate_limited_key", "Too many starts for this API key."),
    "budget": ("sms_budget", "The service's SMS budget is spent for now."),
}


class Limits:
    def __init__(
        self,
        settings: LimitSettings,
        clock: Clock = time.time,
        observer: Observer = IGNORED,
        tally: Tally | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._destinations = Destinations.from_settings(settings)
        self._destinations.warn_of_shared_codes()
        # Checked here, not at the first start: a limit of 0 is a mistake of the settings.
        SlidingWindow(settings.sms_per_phone, settings.sms_per_phone_window_seconds)
        self._tally = tally if tally is not None else MemoryTally(clock)
        #: Called with the reason of every refusal (metrics).
        self._observer = observer

    async def admit(self, phone: str, caller: str) -> float:
        """Count one SMS to `phone` for `caller`, or raise without counting anything.

        Returns the time it was counted at, for `refund`.
        """
        now = self._clock()
        try:
            self._destinations.check(phone)
        except Unprocessable as exc:
            self._refuse(exc.code)
            raise
        windows = self._windows(phone, caller)
        refused = await self._tally.count(windows, now)
        if refused is not None:
            index, wait = refused
            reason, message = REFUSALS[windows[index].name]
            self._refuse(reason)
            raise RateLimited(message, retry_after=wait, code=reason)
        return now

    async def refund(self, phone: str, caller: str, at: float) -> None:
        """Take back what `admit` counted at `at`: the start it was for sent nothing."""
        await self._tally.uncount(self._windows(phone, caller), at)

    async def charge(self, phone: str) -> bool:
        """Count one more SMS to `phone` (a retry or a resend from recovery), if the number's
        limit and the service's budget allow it; False, counting nothing, if they do not."""
        windows = self._windows(phone, None)
        if await self._tally.count(windows, self._clock()) is not None:
            self._refuse("sms_retry_limited")
            return False
        return True

    def _windows(self, phone: str, caller: str | None) -> list[Window]:
        s = self._settings
        windows = [Window("phone", phone, s.sms_per_phone, s.sms_per_phone_window_seconds)]
        if caller is not None:
            windows.append(Window("key", caller, s.starts_per_key_per_minute, 60.0))
        windows.append(Window("budget", "*", s.sms_per_minute, 60.0))
        return windows

    def _refuse(self, reason: str) -> None:
        self._observer.refused(reason)
