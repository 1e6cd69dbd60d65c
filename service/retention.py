"""Retention: finished verifications are kept for a while, then forgotten.

A sweep runs every `sweep_interval_seconds`: it masks phone numbers of verifications finished
longer ago than `redact_phone_after_seconds` (in their outcome in the outbox too), deletes
outcomes delivered longer ago than `keep_sent_outcomes_seconds`, and deletes verifications and
idempotency keys older than `keep_finished_seconds`. An outcome still undelivered after
`keep_finished_seconds` (the queue off, or down that long) is dropped, logged and counted, so its
verification can go too. Under steady load the database stays the same size, whatever SQS does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.config import RetentionSettings
from service.models import Clock
from service.store import Purged, Store

log = logging.getLogger(__name__)


DropHook = Callable[[int], None]


async def sweep(
    store: Store, settings: RetentionSettings, clock: Clock, on_dropped: DropHook | None = None
) -> Purged:
    """One full sweep, chunk by chunk so other writers get their turn; returns what it did.

    `on_dropped` hears of each chunk's dropped outcomes at once, so a failing sweep miscounts none.
    """
    touched = dropped = 0
    while True:
        now = clock()
        purged = await store.purge(
            finished_before=now - settings.keep_finished_seconds,
            redact_before=now - settings.redact_phone_after_seconds,
            sent_before=now - settings.keep_sent_outcomes_seconds,
        )
        touched += purged.touched
        dropped += purged.dropped
        if purged.dropped and on_dropped is not None:
            on_dropped(purged.dropped)
        if purged.touched == 0:
            return Purged(touched, dropped)


async def keep_sweeping(
    store: Store,
    settings: RetentionSettings,
    clock: Clock,
    on_dropped: DropHook | None = None,
) -> None:
    while True:
        try:
            purged = await sweep(store, settings, clock, on_dropped)
        except Exception:
            log.exception("retention sweep failed; trying again next interval")
        else:
            if purged.dropped:
                log.warning(
                    "retention dropped %d outcome(s) never delivered to the queue within %gs",
                    purged.dropped,
                    settings.keep_finished_seconds,
                )
            if purged.touched:
                log.info("retention sweep touched %d rows", purged.touched)
        await asyncio.sleep(settings.sweep_interval_seconds)
