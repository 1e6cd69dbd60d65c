"""Recovery at start-up: every pending verification resumes with the time it has left.

Like DBOS's recovery, it is safe to run twice: arming a verification that is already armed does
nothing, and one that expired while the service was down is finished once, in one transaction
with the others.
"""

from __future__ import annotations

import logging
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
    result = Recovered(resumed=resumed, expired=len(overdue), resent=resent)
    log.info(
        "recovered: %d resumed (%d SMS to send again), %d expired while down",
        result.resumed,
        result.resent,
        result.expired,
    )
    return result
