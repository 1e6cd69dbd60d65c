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
import contextlib
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


class Tenure:
    """Renews the lease and adopts orphaned work, every `lease.check_seconds`, until cancelled.

    A stopping replica stops adopting first (`stop_adopting`), but keeps its lease while its
    last verifications finish, until the store hands them over at its close.
    """

    def __init__(
        self,
        store: Store,
        lease: Lease,
        orchestrator: Orchestrator,
        clock: Clock,
        ttl: float,
        observer: Observer = IGNORED,
    ) -> None:
        self._store = store
        self._lease = lease
        self._orchestrator = orchestrator
        self._clock = clock
        self._ttl = ttl
        self._observer = observer
        self._adopting = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop_adopting(self) -> None:
        self._adopting = False

    async def stop(self) -> None:
        """Stop renewing: the last thing before the store closes, and hands the work over."""
        self._adopting = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                if not await self._lease.renew():
                    await self._rejoin()
                if self._adopting:
                    await self._adopt()
            except StoreUnavailable as exc:
                # The fence holds without us: what this replica cannot renew it cannot write.
                log.warning("could not renew the lease: %s", exc)
            await asyncio.sleep(self._lease.check_seconds)

    async def _rejoin(self) -> None:
        dropped = await self._orchestrator.abandon()
        log.error(
            "the lease lapsed (was this replica paused, or cut off?): let go of %d"
            " verifications, which other replicas may have taken over",
            dropped,
        )
        if not self._adopting:
            return  # stopping: nothing is taken up again
        await self._lease.join()
        await recover(self._store, self._orchestrator, self._clock, self._ttl)

    async def _adopt(self) -> None:
        while adopted := await self._lease.adopt(ADOPT_CHUNK):
            self._observer.adopted(len(adopted))
            result = await resume_all(
                self._store, self._orchestrator, adopted, self._clock, self._ttl
            )
            log.warning(
                "took over %d verifications of a replica that stopped renewing its lease"
                " (%d expired, %d SMS to send)",
                len(adopted),
                result.expired,
                result.resent,
            )
            if len(adopted) < ADOPT_CHUNK or not self._adopting:
                return
