"""Tenure: this replica's lease kept, and the work of lapsed replicas taken over.

Where replicas share a database, each holds the owner-only work of its verifications (the SMS,
the deadline, publishing the outcome) under a lease (`Store.lease`). This task renews it every
`check_seconds`, and each time adopts what replicas whose lease lapsed (killed, paused, cut off)
or that left were holding, resuming it through the recovery a restart uses: the overdue expire
at once, the rest wait out what is left of their time, unsent SMS go out. DBOS recovers a dead
executor's workflows the same way, by the same code as its own restart.

A renewal that finds the lease lapsed means the others may have taken over: every verification
armed here is let go without a write (the database would refuse them anyway), the replica joins
again under a new epoch, and recovers what is still its own.
"""

from __future__ import annotations

import asyncio
import logging

from service.errors import StoreUnavailable
from service.models import Clock
from service.observers import IGNORED, Observer
from service.orchestrator.orchestrator import Orchestrator
from service.orchestrator.recovery import recover, resume_all
from service.store import Lease, Store

log = logging.getLogger(__name__)

#: Verifications adopted per statement: a dead replica's hundred thousand come in chunks, so
#: two survivors share them and neither holds locks for long.
ADOPT_CHUNK = 2000


async def keep_tenure(
    store: Store,
    lease: Lease,
    orchestrator: Orchestrator,
    clock: Clock,
    ttl: float,
    observer: Observer = IGNORED,
) -> None:
    """Renew the lease and adopt orphaned work, every `lease.check_seconds`, until cancelled."""
    while True:
        try:
            if not await lease.renew():
                await _rejoin(store, lease, orchestrator, clock, ttl)
            await _adopt(store, lease, orchestrator, clock, ttl, observer)
        except StoreUnavailable as exc:
            # The fence holds without us: what this replica cannot renew it cannot write.
            log.warning("could not renew the lease: %s", exc)
        await asyncio.sleep(lease.check_seconds)


async def _rejoin(
    store: Store, lease: Lease, orchestrator: Orchestrator, clock: Clock, ttl: float
) -> None:
    dropped = await orchestrator.abandon()
    log.error(
        "the lease lapsed (was this replica paused, or cut off?): letting go of %d"
        " verifications, which other replicas may have taken over; joining again",
        dropped,
    )
    await lease.join()
    await recover(store, orchestrator, clock, ttl)


async def _adopt(
    store: Store,
    lease: Lease,
    orchestrator: Orchestrator,
    clock: Clock,
    ttl: float,
    observer: Observer,
) -> None:
    while adopted := await lease.adopt(ADOPT_CHUNK):
        observer.adopted(len(adopted))
        result = await resume_all(store, orchestrator, adopted, clock, ttl)
        log.warning(
            "took over %d verifications of a replica that stopped renewing its lease"
            " (%d expired, %d SMS to send)",
            len(adopted),
            result.expired,
            result.resent,
        )
        if len(adopted) < ADOPT_CHUNK:
            return
