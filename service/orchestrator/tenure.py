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
    """Keeps the lease, and takes up the work of lapsed replicas, until stopped.

    Two loops, each every `lease.check_seconds`: the renewal, on the lease's own connection,
    which nothing else holds up (a restart's recovery, an adoption of a hundred thousand); and
    the adoption, which also lets go of the tasks of verifications decided elsewhere and runs
    recovery again after anything that may have left a verification unarmed. A stopping replica
    stops adopting first (`stop_adopting`), but keeps its lease while its last verifications
    finish, until the store hands them over at its close (`stop`).
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
        self._adopting = False
        self._stopping = False
        #: Set when what this replica holds may not all be armed: recovery runs again.
        self._resync = False
        #: Taken by a rejoin and by each round of adoption: neither runs inside the other.
        self._turn = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start renewing: before recovery, which may take longer than a lease."""
        self._tasks.append(asyncio.create_task(self._renewing()))

    def start_adopting(self) -> None:
        """Start taking up orphaned work: once this replica's own is recovered."""
        self._adopting = True
        self._tasks.append(asyncio.create_task(self._adopting_loop()))

    def stop_adopting(self) -> None:
        self._adopting = False
        self._stopping = True

    async def stop(self) -> None:
        """Stop renewing: the last thing before the store closes, and hands the work over."""
        self.stop_adopting()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _renewing(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            started = loop.time()
            try:
                renewed = await self._lease.renew()
                took = loop.time() - started
                if took + (started - due) > self._lease.check_seconds:
                    # Past a check, the lease's margin is being eaten: say by what.
                    log.warning(
                        "the lease's renewal came %.2fs late and took %.2fs", started - due, took
                    )
                if not renewed:
                    await self._rejoin()
            except StoreUnavailable as exc:
                # The fence holds without us: what this replica cannot renew it cannot write.
                log.warning("could not renew the lease: %s", exc)
            except Exception:
                log.exception("renewing the lease failed")
            due = loop.time() + self._lease.check_seconds
            await asyncio.sleep(self._lease.check_seconds)

    async def _adopting_loop(self) -> None:
        while self._adopting:
            try:
                async with self._turn:
                    await self._adopt_round()
            except Exception as exc:
                self._resync = True  # what was adopted, or let go, may not all be armed
                if isinstance(exc, StoreUnavailable):
                    log.warning("could not adopt: %s", exc)
                else:
                    log.exception("adopting failed")
            await asyncio.sleep(self._lease.check_seconds)

    async def _adopt_round(self) -> None:
        if self._resync:
            await recover(self._store, self._orchestrator, self._clock, self._ttl)
            self._resync = False
        await self._rearm(self._orchestrator.take_doubts())
        await self._adopt()
        decided = await self._lease.decided_elsewhere()
        if decided:
            self._orchestrator.forget(decided)

    async def _rearm(self, doubted: set[str]) -> None:
        """Arm those of `doubted` still pending and held here: one read each, not a recovery."""
        for verification_id in doubted:
            v = await self._store.get(verification_id)
            if v is not None and v.pending and await self._lease.holds(verification_id):
                self._orchestrator.resume(v)

    async def _rejoin(self) -> None:
        async with self._turn:
            dropped = await self._orchestrator.abandon()
            log.error(
                "the lease lapsed (was this replica paused, or cut off?): let go of %d"
                " verifications, which other replicas may have taken over",
                dropped,
            )
            if self._stopping:
                return  # nothing is taken up again by a replica on its way out
            await self._lease.join()
            self._resync = True  # what is still this replica's is armed again next round

    async def _adopt(self) -> None:
        started = self._clock()
        while self._adopting and (adopted := await self._lease.adopt(ADOPT_CHUNK)):
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
            # A round is one check long at most: decided-elsewhere and doubts are looked at too.
            if len(adopted) < ADOPT_CHUNK or self._clock() - started > self._lease.check_seconds:
                return
