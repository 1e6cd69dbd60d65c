"""A clock a test sets, for the modules that take one."""

from __future__ import annotations


class SetClock:
    """Unix seconds that move only when the test says: `clock.now += 5`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
