"""Recovery at start-up: every pending verification resumes with the time it has left.

Like DBOS's recovery, it is safe to run twice: arming a verification that is already armed does
nothing, and one that expired while the service was down is finished once, in one transaction
with the others, by the orchestrator (`Orchestrator.expire`), as its deadline would have.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, replace

from service.models import Clock, Verification
from service.orchestrator.orchestrator import Orchestrator
from service.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    resumed: int
    expired: int
    resent: int


#: From this many pending verifications on, recovery takes them out of the collector's sight.
FREEZE_FROM = 10_000


async def recover(store: Store, orchestrator: Orchestrator, clock: Clock, ttl: float) -> Recovered:
    """Resume every pending verification this process holds (all of them, alone on SQLite)."""
    result = await resume_all(store, orchestrator, await store.pending(), clock, ttl)
    log.info(
        "recovered: %d resumed (%d SMS to send again), %d expired while down",
        result.resumed,
        result.resent,
        result.expired,
    )
    return result


async def resume_all(
    store: Store, orchestrator: Orchestrator, pending: list[Verification], clock: Clock, ttl: float
) -> Recovered:
    """Resume `pending`, held here: a restart's, or what was adopted from a lapsed replica."""
    # Arming 100,000 verifications makes a million long-lived objects; the cyclic collector
    # would walk them again and again while they are made, two thirds of a restart's time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return await _resume_all(store, orchestrator, pending, clock, ttl)
    finally:
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
    del pending
    many = len(live.all) >= FREEZE_FROM
    if many:
        gc.collect()  # whatever is garbage now goes, so that the freeze below keeps none
    resumed = await _resume(orchestrator, [v for v in live.all if v.sms_sent_at is not None])
    # One turn of the loop: each of these tasks takes its first step and waits for its code.
    await asyncio.sleep(0)
    if many:
        # They will wait for minutes, then be freed by reference counting: full collections
        # need not walk them. Those that resend their SMS are left out, as they are mid-request.
        gc.freeze()
    resent = await _resume(orchestrator, [v for v in live.all if v.sms_sent_at is None])
    return Recovered(resumed=resumed + resent, expired=len(overdue), resent=resent)


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


#: Verifications armed between two turns of the loop: a hundred thousand must not hold the lease's
#: renewal, or the requests, up for seconds.
RESUME_CHUNK = 5_000


async def _resume(orchestrator: Orchestrator, verifications: list[Verification]) -> int:
    resumed = 0
    for n, v in enumerate(verifications, 1):
        if n % RESUME_CHUNK == 0:
            await asyncio.sleep(0)
        try:
            orchestrator.resume(v)
        except Exception:
            log.exception("could not resume", extra={"verification_id": v.id})
            continue
        resumed += 1
    return resumed
