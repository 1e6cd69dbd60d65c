"""The cyclic garbage collector, kept off the state that waits.

A pending verification is a handful of objects (its task, coroutine, run, record) that live for
minutes and are freed by reference counting when it ends. The collector's full collections walk
every one of them all the same: with a million pending that is seconds with the loop stopped, on
whatever request is in flight. So, once many wait, what has survived is frozen every second
(`gc.freeze`, a constant-time splice): full collections then walk only what is younger.

What it costs: a reference cycle that becomes garbage after being frozen is not collected. The
service's own objects end without cycles, so little accumulates; should the frozen count grow to
twice what the pending verifications explain, everything is thawed and collected once (a pause,
logged) and frozen again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Below this many pending, full collections are short: nothing is frozen.
FREEZE_FROM = 10_000
FREEZE_EVERY_SECONDS = 1.0
#: How often the frozen count is compared with what the pending verifications explain.
AUDIT_EVERY_SECONDS = 600.0


class Collector:
    """Freezes the survivors every second while at least `FREEZE_FROM` verifications wait."""

    def __init__(self, pending: Callable[[], int]) -> None:
        self._pending = pending
        #: Frozen objects per pending verification, as first seen: the audit's yardstick.
        self._per_pending: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def freeze(self) -> None:
        """Freeze what is alive now, if enough waits for it to matter."""
        pending = self._pending()
        if pending < FREEZE_FROM:
            return
        gc.freeze()
        if self._per_pending is None:
            self._per_pending = gc.get_freeze_count() / pending

    def audit(self) -> bool:
        """Thaw and collect once if the frozen objects outgrew the pending; True if it did."""
        pending = self._pending()
        if self._per_pending is None or gc.get_freeze_count() <= 2 * self._per_pending * max(
            pending, FREEZE_FROM
        ):
            return False
        frozen = gc.get_freeze_count()
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        log.warning(
            "the frozen heap had grown to %d objects for %d pending: collected %d in %.2f s",
            frozen,
            pending,
            freed,
            time.perf_counter() - started,
        )
        self._per_pending = None
        self.freeze()
        return True

    async def _keep(self) -> None:
        audited = time.monotonic()
        while True:
            await asyncio.sleep(FREEZE_EVERY_SECONDS)
            self.freeze()
            if time.monotonic() - audited >= AUDIT_EVERY_SECONDS:
                audited = time.monotonic()
                self.audit()
