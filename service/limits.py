"""Limits on starts: the defences against SMS pumping and runaway callers.

Every start that would send an SMS passes `admit` first: the destination must be allowed (its
country and number type: `service.destinations`), the number must not have had too many SMS lately
(Twilio Verify's 5 in 10 minutes), the caller's API key must be under its rate, and the whole
service under its SMS budget. The windows live in memory: a restart forgets them, which errs on
the side of the people waiting for a code.
"""

from __future__ import annotations

import time
from collections import deque

from service.config import LimitSettings
from service.destinations import Destinations
from service.errors import ConfigError, RateLimited, Unprocessable
from service.models import Clock
from service.observers import IGNORED, Observer

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


class Limits:
    def __init__(
        self, settings: LimitSettings, clock: Clock = time.time, observer: Observer = IGNORED
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._destinations = Destinations.from_settings(settings)
        self._destinations.warn_of_shared_codes()
        self._per_phone = SlidingWindow(
            settings.sms_per_phone, settings.sms_per_phone_window_seconds
        )
        self._per_key = SlidingWindow(settings.starts_per_key_per_minute, 60.0)
        self._budget = SlidingWindow(settings.sms_per_minute, 60.0)
        self._last_sweep = clock()
        #: Called with the reason of every refusal (metrics).
        self._observer = observer

    def admit(self, phone: str, caller: str) -> float:
        """Count one SMS to `phone` for `caller`, or raise without counting anything.

        Returns the time it was counted at, for `refund`.
        """
        now = self._clock()
        self._sweep(now)
        try:
            self._destinations.check(phone)
        except Unprocessable as exc:
            self._refuse(exc.code)
            raise
        checks = (
            (self._per_phone, phone, "rate_limited_phone", "Too many codes sent to this number."),
            (self._per_key, caller, "rate_limited_key", "Too many starts for this API key."),
            (self._budget, "*", "sms_budget", "The service's SMS budget is spent for now."),
        )
        for window, key, reason, message in checks:
            wait = window.wait(key, now)
            if wait > 0:
                self._refuse(reason)
                raise RateLimited(message, retry_after=wait, code=reason)
        for window, key, _, _ in checks:
            window.add(key, now)
        return now

    def refund(self, phone: str, caller: str, at: float) -> None:
        """Take back what `admit` counted at `at`: the start it was for sent nothing."""
        for window, key in ((self._per_phone, phone), (self._per_key, caller), (self._budget, "*")):
            window.remove(key, at)

    def charge(self, phone: str) -> bool:
        """Count one more SMS to `phone` (a retry or a resend from recovery), if the number's
        limit and the service's budget allow it; False, counting nothing, if they do not."""
        now = self._clock()
        windows = ((self._per_phone, phone), (self._budget, "*"))
        if any(window.wait(key, now) > 0 for window, key in windows):
            self._refuse("sms_retry_limited")
            return False
        for window, key in windows:
            window.add(key, now)
        return True

    def _refuse(self, reason: str) -> None:
        self._observer.refused(reason)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for window in (self._per_phone, self._per_key, self._budget):
            window.sweep(now)
