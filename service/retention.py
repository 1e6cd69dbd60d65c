"""Retention: finished verifications are kept for a while, then forgotten.

A sweep runs every `sweep_interval_seconds`: it masks phone numbers of verifications finished
longer ago than `redact_phone_after_seconds`, deletes those finished longer ago than
`keep_finished_seconds`, and deletes outcomes delivered longer ago than
`keep_sent_outcomes_seconds`. Under steady load the database stays the same size.
"""

from __future__ import annotations

import asyncio
import logging

from service.config import RetentionSettings
from service.orchestrator import Clock
from service.store import Store

log = logging.getLogger(__name__)


async def sweep(store: Store, settings: RetentionSettings, clock: Clock) -> int:
    """One full sweep, chunk by chunk so other writers get their turn; returns rows touched."""
    total = 0
    while True:
        now = clock()
        touched = await store.purge(
            finished_before=now - settings.keep_finished_seconds,
            redact_before=now - settings.redact_phone_after_seconds,
            sent_before=now - settings.keep_sent_outcomes_seconds,
        )
        total += touched
        if touched == 0:
            return total


async def keep_sweeping(store: Store, settings: RetentionSettings, clock: Clock) -> None:
    while True:
        try:
            touched = await sweep(store, settings, clock)
        except Exception:
            log.exception("retention sweep failed; trying again next interval")
        else:
            if touched:
                log.info("retention sweep touched %d rows", touched)
        await asyncio.sleep(settings.sweep_interval_seconds)
