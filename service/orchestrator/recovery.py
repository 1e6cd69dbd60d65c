"""Recovery at start-up: every pending verification resumes with the time it has left.

Like DBOS's recovery, it is safe to run twice: arming a verification that is already armed does
nothing, and one that expired while the service was down is finished once, in one transaction
with the others, by the orchestrator (`Orchestrator.expire`), as its deadline would have.

It runs beside the requests, not before them: pages of pending verifications are read soonest
deadline first and armed between turns of the loop, so a million are armed while the service
answers, each before its deadline comes (arming outpaces the clock). A request for one not
armed yet arms it on the spot (`Orchestrator`'s `recovering`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from service.collector import FREEZE_FROM
from service.models import Clock, Verification
from service.orchestrator.orchestrator import Orchestrator
from service.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    resumed: int = 0
    expired: int = 0
    resent: int = 0

    def __add__(self, other: Recovered) -> Recovered:
        return Recovered(
            self.resumed + other.resumed, self.expired + other.expired, self.resent + other.resent
        )


#: Pending verifications read at a time, and armed between two turns of the loop: each turn
#: is a few milliseconds, so whatever else runs (a deadline's outcome on its way to SQS, a
#: request) waits no longer than that for its next step.
PAGE = 5_000
ARM_CHUNK = 100


async def recover(store: Store, orchestrator: Orchestrator, clock: Clock, ttl: float) -> Recovered:
    """Resume every pending verification this process holds (all of them, alone on SQLite)."""
    started = time.perf_counter()
    total = Recovered()
    orchestrator.recovering = True
    # The next page is read (on the store's own thread) while this one is armed.
    reading: asyncio.Task[list[Verification]] | None = _read(store, None)
    try:
        with _collector_paused(orchestrator):
            while reading is not None and not orchestrator.stopping:
                page = await reading
                reading = None
                if len(page) == PAGE:
                    reading = _read(store, (page[-1].expires_at, page[-1].id))
                total += await _resume_all(store, orchestrator, page, clock, ttl)
                await asyncio.sleep(0)  # the requests waiting get their turn
    finally:
        orchestrator.recovering = False
        if reading is not None:
            reading.cancel()
    log.info(
        "recovered: %d resumed (%d SMS to send again), %d expired while down, in %.2f s",
        total.resumed,
        total.resent,
        total.expired,
        time.perf_counter() - started,
    )
    return total


def _read(store: Store, after: tuple[float, str] | None) -> asyncio.Task[list[Verification]]:
    return asyncio.create_task(store.pending(after, PAGE))


async def resume_all(
    store: Store, orchestrator: Orchestrator, pending: list[Verification], clock: Clock, ttl: float
) -> Recovered:
    """Resume `pending`, held here: what was adopted from a lapsed replica."""
    with _collector_paused(orchestrator):
        return await _resume_all(store, orchestrator, pending, clock, ttl)


@contextmanager
def _collector_paused(orchestrator: Orchestrator) -> Iterator[None]:
    # Arming 100,000 verifications makes a million long-lived objects; the cyclic collector
    # would walk them again and again while they are made, two thirds of a restart's time.
    # They are frozen before it is enabled again, or its first collection would walk them all
    # at once (a second's pause at a million); `service.collector` keeps it so.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if orchestrator.pending_count >= FREEZE_FROM:
            gc.freeze()
        if enabled:
            gc.enable()


async def _resume_all(
    store: Store, orchestrator: Orchestrator, pending: list[Verification], clock: Clock, ttl: float
) -> Recovered:
    now = clock()
    overdue = [v for v in pending if v.expires_at <= now]
    await orchestrator.expire(overdue)
    live = _capped([v for v in pending if v.expires_at > now], now + ttl)
    if live.shortened:
        await store.shorten(live.shortened)
        log.warning(
            "%d pending verifications had more than the TTL left (was the clock set back?);"
            " their deadlines are now at most the TTL away",
            len(live.shortened),
        )
    resumed = await _resume(orchestrator, live.all)
    resent = sum(1 for v in live.all if v.sms_sent_at is None)
    return Recovered(resumed=resumed, expired=len(overdue), resent=resent)


@dataclass
class _Live:
    all: list[Verification]
    shortened: list[Verification]


def _capped(live: list[Verification], latest: float) -> _Live:
    """No verification keeps more than the TTL: a wall clock set back must not stretch a code."""
    shortened = [replace(v, expires_at=latest) for v in live if v.expires_at > latest]
    if not shortened:
        return _Live(live, [])
    by_id = {v.id: v for v in shortened}
    return _Live([by_id.get(v.id, v) for v in live], shortened)


async def _resume(orchestrator: Orchestrator, verifications: list[Verification]) -> int:
    resumed = 0
    for n, v in enumerate(verifications, 1):
        if n % ARM_CHUNK == 0:
            await asyncio.sleep(0)
        try:
            orchestrator.resume(v)
        except Exception:
            log.exception("could not resume", extra={"verification_id": v.id})
            continue
        resumed += 1
    return resumed
