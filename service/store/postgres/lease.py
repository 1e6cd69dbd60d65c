"""A replica's lease on its owner-only work, and the fence that makes it hold in the database.

Several replicas share one database. Any of them decides a code or a cancel: the row's status is
the fence, in one conditional UPDATE. The rest is owner-only: a verification's SMS and deadline,
and the publishing of an outcome, belong to the replica that holds it (the `holder` column): the
one that started it (or decided it, for an outcome), or that adopted it later. A replica holds
its work under a lease, its row in `replicas`, renewed every `check_seconds` by the database's
clock; once the lease lapses, the others adopt the work and resume it through the recovery a
restart uses (`service.orchestrator.tenure`).

The fence is Temporal's range_id. Every start of a replica takes a new `epoch` from a sequence,
never reused; every owner-only write checks, in its own statement, that the row is held by this
replica's name and that this name's lease is still valid at this epoch by the database's clock.
A replica paused past its lease (SIGSTOP, a long GC, a partition) therefore changes nothing once
it resumes, whatever it believes: it learns so at its next renewal, lets go, and joins again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from service.models import Verification
from service.store.postgres.failures import TRANSIENT, unavailable
from service.store.postgres.rows import as_verification, count, prefixed

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[T]]

#: The database's time, Unix seconds: the one clock every replica's lease is judged by.
NOW = "extract(epoch FROM clock_timestamp())"


def valid(name: str, epoch: str) -> str:
    """SQL that is true while replica `name` holds a valid lease at `epoch` (both parameters)."""
    return (
        f"EXISTS (SELECT 1 FROM replicas WHERE name = {name} AND epoch = {epoch}"
        f" AND lease_until > {NOW})"
    )


# A name held by a live lease is taken over all the same (a restart comes back before its old
# lease lapses), but said: two processes given one name would take it from each other.
JOIN = f"""
    WITH before AS (SELECT lease_until > {NOW} AS live FROM replicas WHERE name = $1)
    INSERT INTO replicas AS r (name, epoch, lease_until, started_at)
    VALUES ($1, nextval('replica_epochs'), {NOW} + $2, {NOW})
    ON CONFLICT (name) DO UPDATE
        SET epoch = excluded.epoch, lease_until = excluded.lease_until,
            started_at = excluded.started_at
    RETURNING epoch, coalesce((SELECT live FROM before), false)
"""
RENEW = f"""
    UPDATE replicas SET lease_until = {NOW} + $3
    WHERE name = $1 AND epoch = $2 AND lease_until > {NOW}
"""
LEAVE = "UPDATE replicas SET lease_until = 0 WHERE name = $1 AND epoch = $2"
LAPSED = f"SELECT name FROM replicas WHERE lease_until <= {NOW} AND name <> $1"
# The rows are picked by the index on `holder` (NULL, or a lapsed name given), then checked
# again against `replicas` in the same statement: a name that joined again meanwhile keeps its
# work. SKIP LOCKED lets two survivors adopting at once split the work instead of queueing.
ORPHANED = f"""
    (v.holder IS NULL OR v.holder IN (
        SELECT name FROM replicas WHERE lease_until <= {NOW} AND name <> $1))
"""
ADOPT_VERIFICATIONS = f"""
    UPDATE verifications AS v SET holder = $1
    FROM (SELECT id FROM verifications
          WHERE status = 'pending' AND (holder IS NULL OR holder = ANY($3::text[]))
          LIMIT $4 FOR UPDATE SKIP LOCKED) AS taken
    WHERE v.id = taken.id AND {ORPHANED} AND {valid("$1", "$2")}
    RETURNING {prefixed("v")}
"""
ADOPT_OUTCOMES = f"""
    UPDATE outbox AS v SET holder = $1
    FROM (SELECT seq FROM outbox
          WHERE sent_at IS NULL AND (holder IS NULL OR holder = ANY($3::text[]))
          LIMIT $4 FOR UPDATE SKIP LOCKED) AS taken
    WHERE v.seq = taken.seq AND {ORPHANED} AND {valid("$1", "$2")}
"""
ADOPT_WEBHOOKS = f"""
    UPDATE webhook_deliveries AS v SET holder = $1
    FROM (SELECT seq FROM webhook_deliveries
          WHERE finished_at IS NULL AND (holder IS NULL OR holder = ANY($3::text[]))
          LIMIT $4 FOR UPDATE SKIP LOCKED) AS taken
    WHERE v.seq = taken.seq AND {ORPHANED} AND {valid("$1", "$2")}
"""
# A lapsed replica's row goes once nothing is left to adopt from it, and long after it lapsed:
# a write of its own still in flight (waiting for a lock, `lock_timeout` at most; a transaction
# left open is ended by the server at `idle_in_transaction_session_timeout`) may yet commit a row
# it holds, which is then still adopted by name. Its epoch is never reused.
FORGET_AFTER_SECONDS = 600
FORGET = f"""
    WITH forgotten AS (
        DELETE FROM replicas AS r
        WHERE lease_until <= {NOW} - {FORGET_AFTER_SECONDS} AND name <> $1
          AND NOT EXISTS (SELECT 1 FROM verifications WHERE holder = r.name AND status = 'pending')
          AND NOT EXISTS (SELECT 1 FROM outbox WHERE holder = r.name AND sent_at IS NULL)
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries WHERE holder = r.name AND finished_at IS NULL)
        RETURNING name
    )
    DELETE FROM decided_elsewhere WHERE holder IN (SELECT name FROM forgotten)
"""
HOLDS = f"SELECT holder = $1 AND {valid('$1', '$2')} FROM verifications WHERE id = $3"
DECIDED_ELSEWHERE = "DELETE FROM decided_elsewhere WHERE holder = $1 RETURNING verification_id"


CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def _boot_clock() -> float:
    """Seconds that go on while the machine is suspended, unlike `time.monotonic` on Linux: a
    replica whose host slept past its lease must not believe it still holds it.
    """
    return time.clock_gettime(CLOCK)


class PostgresLease:
    """This replica's lease: its name, its epoch, and when it was last known to be valid.

    Renewals go through a connection of their own, so that neither a busy pool nor a long
    adoption holds them up; `write` runs the rest on the store's pool (its failures then count
    as the store's).
    """

    def __init__(
        self,
        url: str,
        name: str,
        seconds: float,
        write: Callable[[Work[Any]], Awaitable[Any]],
        adopted_outcomes: Callable[[int], None],
    ) -> None:
        self._url = url
        self.name = name
        self.seconds = seconds
        self.epoch = 0
        self._write = write
        #: Told how many unsent outcomes were adopted (the store counts them, and wakes the
        #: publisher).
        self._adopted_outcomes = adopted_outcomes
        #: The boot-clock time the last renewal that held was sent: valid `seconds` from then.
        self._renewed_at = -math.inf
        #: Not trusted before this, whatever the renewals: a name taken over from a live lease
        #: waits until that lease would have lapsed.
        self._distrust_until = -math.inf
        self._db: asyncpg.Connection | None = None

    @property
    def check_seconds(self) -> float:
        """How often the lease is renewed and orphans looked for: a fifth of the lease."""
        return self.seconds / 5

    @property
    def trusted(self) -> bool:
        """Whether this replica may start owner-only work that the database cannot fence (an
        SMS, a message to the queue): its lease is surely valid for one more check.

        River's trust window: shorter than the lease, so a replica that was paused stops
        before anyone else starts. Checked before each SMS try and each read of the outbox:
        what is already on its way when a pause comes is not called back.
        """
        now = _boot_clock()
        return self._distrust_until <= now < self._renewed_at + self.seconds - self.check_seconds

    async def join(self) -> None:
        """Take this name with a new epoch: the name's earlier life is fenced out from now on."""
        sent = _boot_clock()
        row = await self._own(lambda db: db.fetchrow(JOIN, self.name, self.seconds))
        self.epoch, live = int(row[0]), bool(row[1])
        self._renewed_at = sent
        if live:
            self._distrust_until = sent + self.seconds
            log.warning(
                "replica name %r was held by a live lease: taken over (a restart). If another"
                " process runs with this name, give each its own database.replica_name",
                self.name,
            )
        log.info("replica %r joined at epoch %d", self.name, self.epoch)

    async def renew(self) -> bool:
        """Extend the lease; False if it had lapsed or the name was taken: then it is lost."""
        sent = _boot_clock()
        status = await self._own(lambda db: db.execute(RENEW, self.name, self.epoch, self.seconds))
        if count(status) != 1:
            self._renewed_at = -math.inf
            return False
        self._renewed_at = sent
        return True

    async def holds(self, verification_id: str) -> bool:
        """Whether this replica holds the verification, under a valid lease."""
        held = await self._write(
            lambda db: db.fetchval(HOLDS, self.name, self.epoch, verification_id)
        )
        return bool(held)

    async def adopt(self, limit: int) -> list[Verification]:
        """Take over, at most `limit` of each, the pending verifications and the unsent outcomes
        of replicas whose lease lapsed (or that handed their work over), and of none.
        """

        async def work(db: asyncpg.Connection) -> tuple[list[Verification], int]:
            lapsed = [row[0] for row in await db.fetch(LAPSED, self.name)]
            async with db.transaction():
                rows = await db.fetch(ADOPT_VERIFICATIONS, self.name, self.epoch, lapsed, limit)
                status = await db.execute(ADOPT_OUTCOMES, self.name, self.epoch, lapsed, limit)
                hooks = await db.execute(ADOPT_WEBHOOKS, self.name, self.epoch, lapsed, limit)
            if lapsed and not rows:
                await db.execute(FORGET, self.name)
            # Deliveries count as outcomes here: either wakes the channels.
            adopted = count(status) + count(hooks)
            return [as_verification(r) for r in rows], adopted

        adopted, outcomes = await self._write(work)
        if outcomes:
            self._adopted_outcomes(outcomes)
        verifications: list[Verification] = adopted
        return verifications

    async def decided_elsewhere(self) -> list[str]:
        """Verifications held here that another replica decided since the last call: their
        tasks here have nothing left to do.
        """
        rows = await self._write(lambda db: db.fetch(DECIDED_ELSEWHERE, self.name))
        return [row[0] for row in rows]

    async def leave(self) -> None:
        """Hand everything over at once: the lease ends now, and the others adopt the work."""
        await self._own(lambda db: db.execute(LEAVE, self.name, self.epoch))
        self._renewed_at = -math.inf
        log.info("replica %r handed its work over", self.name)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _own(self, work: Work[T]) -> T:
        """Run `work` on the lease's own connection, made again if it was lost."""
        try:
            if self._db is None or self._db.is_closed():
                self._db = await asyncpg.connect(
                    self._url,
                    timeout=self.seconds,
                    command_timeout=self.seconds,
                    server_settings={"application_name": "verification-service lease"},
                )
            return await work(self._db)
        except TRANSIENT as exc:
            await self.close()
            raise unavailable(exc) from exc
