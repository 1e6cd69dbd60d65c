"""Recovery at start-up: every pending verification resumes with the time it has left.

Like DBOS's recovery, it is safe to run twice: arming a verification that is already armed does
nothing, and one that expired while the service was down is finished once, in one transaction
with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

from service.models import Status
from service.orchestrator import Clock, Orchestrator
from service.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    resumed: int
    expired: int
    resent: int


async def recover(store: Store, orchestrator: Orchestrator, clock: Clock) -> Recovered:
    with _collector_paused():
        result = await _recover(store, orchestrator, clock)
    log.info(
        "recovered: %d resumed (%d SMS to send again), %d expired while down",
        result.resumed,
        result.resent,
        result.expired,
    )
    return result


async def _recover(store: Store, orchestrator: Orchestrator, clock: Clock) -> Recovered:
    now = clock()
    pending = await store.pending()
    overdue = [
        replace(v, status=Status.EXPIRED, completed_at=now) for v in pending if v.expires_at <= now
    ]
    if overdue:
        await store.finish(overdue)
        for v in overdue:
            orchestrator.on_finished(v)
    resumed = resent = 0
    for v in pending:
        if v.expires_at <= now:
            continue
        try:
            orchestrator.resume(v)
        except Exception:
            log.exception("could not resume", extra={"verification_id": v.id})
            continue
        resumed += 1
        resent += v.sms_sent_at is None
    # One turn of the loop: every task takes its first step and is waiting when this returns.
    await asyncio.sleep(0)
    return Recovered(resumed=resumed, expired=len(overdue), resent=resent)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Arm without the cyclic garbage collector, then take what was armed out of its sight.

    Arming 100,000 verifications makes a million long-lived objects; the collector would walk
    them again and again while they are made (two thirds of a restart's time), and then at every
    full collection for as long as they wait. Nothing made here is garbage yet, and what is
    freed later is freed by reference counting, which `gc.freeze` does not affect.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
