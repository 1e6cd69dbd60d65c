"""The PostgreSQL store: SQLite's tables and transitions, for replicas sharing one database.

Each method is one transaction, most of them one statement: PostgreSQL commits concurrent
transactions together itself, so SQLite's group commit has nothing to add here. Every transition
is conditional in its own statement (`status = 'pending'`, and the attempts a caller saw), so it
holds whoever else writes meanwhile; owner-only work is fenced by this replica's lease in the
same statement too (`lease`). The schema and its migrations are in `schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from service.errors import StoreUnavailable
from service.models import Clock, Verification
from service.store.base import Decided, KeyHolder, OutboxRecord, Purged
from service.store.postgres.failures import TRANSIENT, unavailable
from service.store.postgres.lease import PostgresLease, valid
from service.store.postgres.rows import (
    COLUMNS,
    SELECT_VERIFICATION,
    as_row,
    as_verification,
    count,
    prefixed,
    redact_bodies,
)
from service.store.postgres.schema import migrate
from service.store.postgres.tally import SWEEP as SWEEP_LIMITS
from service.store.postgres.tally import PostgresTally
from service.store.postgres.webhooks import (
    PostgresWebhooks,
    purge_deliveries,
    register_endpoints,
)

T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[T]]


#: This replica's lease at its epoch ($1 and $2 of the statements below): the fence.
HELD = valid("$1", "$2")

# Held by this replica, if its lease holds: a replica whose lease lapsed starts nothing, as no one
# would adopt what it started. A pending one for the same caller and number is left as it is.
INSERT_VERIFICATION = f"""
    INSERT INTO verifications ({COLUMNS}, holder)
    SELECT $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $1
    WHERE {HELD}
    ON CONFLICT (owner, phone) WHERE status = 'pending' DO NOTHING
"""
SELECT_PENDING_FOR = f"""
    SELECT {COLUMNS} FROM verifications WHERE owner = $1 AND phone = $2 AND status = 'pending'
"""
RECORD_RESEND = """
    UPDATE verifications SET resends = array_append(resends, $1)
    WHERE id = $2 AND status = 'pending'
"""
SELECT_SPENT_FOR = f"""
    SELECT * FROM (
        SELECT {COLUMNS} FROM verifications WHERE owner = $1 AND phone = $2 AND status <> 'pending'
        ORDER BY created_at DESC LIMIT 1
    ) AS latest WHERE status = 'max_attempts_reached' AND expires_at > $3
"""

# One statement: the conditional UPDATE of each verification still pending, and the outcome of
# each one it changed, in the order given. A replica deciding the same row meanwhile holds its
# lock; once it commits, the row is re-read and no longer pending, so it is not changed twice.
# An owner-only decision (`fenced`: the deadline's, the SMS's) applies only while this replica
# holds the row under a valid lease; one made from a state whose attempts the row no longer has
# (spent meanwhile on another replica) not at all. The outcome is this replica's to publish, if
# its lease holds; else no one's, until a replica adopts it. The holder, if another, is told.
FINISH = f"""
    WITH decided AS (
        SELECT * FROM unnest(
            $3::text[], $4::text[], $5::integer[], $6::integer[], $7::double precision[],
            $8::text[], $9::text[], $10::boolean[], $11::integer[]
        ) WITH ORDINALITY AS d (
            id, status, attempts_left, attempts, completed_at, reason, body, fenced, before, n)
    ), held AS (
        SELECT {HELD} AS ok
    ), applied AS (
        UPDATE verifications AS v SET status = d.status, attempts_left = d.attempts_left,
            attempts = d.attempts, completed_at = d.completed_at, reason = d.reason
        FROM decided AS d WHERE v.id = d.id AND v.status = 'pending'
            AND (NOT d.fenced OR (v.holder = $1 AND (SELECT ok FROM held)))
            AND (d.before IS NULL OR v.attempts = d.before)
        RETURNING v.id, v.status, v.holder, d.body, d.n
    ), outcomes AS (
        INSERT INTO outbox (verification_id, status, body, created_at, holder)
        SELECT id, status, body, $12, CASE WHEN (SELECT ok FROM held) THEN $1 END
        FROM applied ORDER BY n
        ON CONFLICT (verification_id) DO NOTHING
        RETURNING holder
    ), hooks AS (
        INSERT INTO webhook_deliveries (verification_id, endpoint, body, created_at, holder)
        SELECT a.id, e.name, a.body, $12, CASE WHEN (SELECT ok FROM held) THEN $1 END
        FROM applied AS a
        JOIN webhook_endpoints AS e ON e.name = ANY($13::text[]) AND e.disabled_at IS NULL
        ORDER BY a.n
        ON CONFLICT (verification_id, endpoint) DO NOTHING
    ), told AS (
        INSERT INTO decided_elsewhere (holder, verification_id)
        SELECT holder, id FROM applied WHERE holder <> $1
        ON CONFLICT DO NOTHING
    )
    SELECT id FROM applied
"""
SHORTEN = f"""
    UPDATE verifications AS v SET expires_at = s.expires_at
    FROM unnest($3::text[], $4::double precision[]) AS s (id, expires_at)
    WHERE v.id = s.id AND v.status = 'pending' AND v.expires_at > s.expires_at
        AND v.holder = $1 AND {HELD}
"""

OUTBOX_COLUMNS = "seq, verification_id, status, body, attempts"
#: This replica's records due again after a refusal, by when they are due, then those never
#: refused, oldest first: both halves walk the index `outbox_held` from a start, so a read
#: costs `limit` rows, however many other replicas hold.
DUE = f"""
    SELECT {OUTBOX_COLUMNS} FROM (
        (SELECT 0 AS part, next_attempt_at, {OUTBOX_COLUMNS} FROM outbox
         WHERE holder = $3 AND sent_at IS NULL AND next_attempt_at > 0 AND next_attempt_at <= $1
         ORDER BY next_attempt_at, seq LIMIT $2)
        UNION ALL
        (SELECT 1, next_attempt_at, {OUTBOX_COLUMNS} FROM outbox
         WHERE holder = $3 AND sent_at IS NULL AND next_attempt_at = 0 ORDER BY seq LIMIT $2)
    ) AS due ORDER BY part, next_attempt_at, seq LIMIT $2
"""
#: What of a refusal's error the outbox keeps.
MAX_ERROR_LENGTH = 500

#: A purge works in chunks of this many rows per statement, so it never holds locks long.
PURGE_CHUNK = 200
# Keeps the first two digits and the last two: enough for support, too little to call. The
# conditions are repeated outside: a row another replica masked meanwhile is re-read, and left.
REDACT_PHONES = f"""
    UPDATE verifications
    SET phone = substr(phone, 1, 3) || '*****' || right(phone, 2), phone_redacted = true
    WHERE id IN (
        SELECT id FROM verifications
        WHERE status <> 'pending' AND NOT phone_redacted AND completed_at < $1
        LIMIT {PURGE_CHUNK})
      AND NOT phone_redacted
    RETURNING id, phone
"""
# Only the oldest chunk of unsent records is looked at (seq follows creation), so a sweep costs
# the same however many wait while the queue is off or down.
DROP_UNDELIVERED = f"""
    DELETE FROM outbox WHERE seq IN (
        SELECT seq FROM (
            SELECT seq, created_at FROM outbox WHERE sent_at IS NULL
            ORDER BY seq LIMIT {PURGE_CHUNK}) AS oldest
        WHERE created_at < $1)
    RETURNING holder
"""
PURGE_SENT_OUTCOMES = f"""
    DELETE FROM outbox WHERE seq IN (
        SELECT seq FROM outbox WHERE sent_at < $1 LIMIT {PURGE_CHUNK})
"""
PURGE_FINISHED = f"""
    DELETE FROM verifications WHERE id IN (
        SELECT id FROM verifications AS v
        WHERE status <> 'pending' AND completed_at < $1
          AND NOT EXISTS (SELECT 1 FROM outbox WHERE verification_id = v.id)
        LIMIT {PURGE_CHUNK})
"""
PURGE_IDEMPOTENCY_KEYS = f"""
    DELETE FROM idempotency_keys WHERE key IN (
        SELECT key FROM idempotency_keys WHERE created_at < $1 LIMIT {PURGE_CHUNK})
"""


class PostgresStore(PostgresWebhooks):
    """The `Store` on a PostgreSQL database, through a pool of asyncpg connections.

    Open with `await PostgresStore.open(url, clock=..., replica=...)`; close with
    `await store.close()`, which hands this replica's work over to the others at once.
    """

    def __init__(
        self, pool: asyncpg.Pool, url: str, clock: Clock, name: str, lease_seconds: float
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._closed = False
        self._failing_since: float | None = None
        #: Writes under way: close waits for them, as a caller that gave up did not stop them.
        self._writing: set[asyncio.Task[Any]] = set()
        #: Called after an outcome is committed to the outbox (the publisher's wake-up).
        self.on_outcome: Callable[[], None] = lambda: None
        self.lease = PostgresLease(url, name, lease_seconds, self._write, self._adopted_outcomes)
        self.tally = PostgresTally(self._write)
        #: The webhook endpoints configured here: each outcome this replica decides gets a
        #: delivery for each of them that no replica found gone (410).
        self._webhooks: list[str] = []

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock,
        replica: str = "",
        lease_seconds: float = 5.0,
        lock_timeout_ms: int = 5000,
        command_timeout: float = 30.0,
        min_size: int = 2,
        max_size: int = 10,
        webhooks: Mapping[str, str] | None = None,
    ) -> PostgresStore:
        """Connect, migrate the schema (once, whatever other replicas start meanwhile), join.

        `replica` names this replica for its lease (a random name if empty): a restart under
        the same name takes its own work back at once, where another name waits for the lease.
        """
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                # A statement that hangs (a partition, a stuck server) fails after this long.
                command_timeout=command_timeout,
                # asyncpg's default reset sends four statements on every release (advisory
                # unlocks, CLOSE ALL, UNLISTEN, RESET ALL); nothing here leaves session state
                # behind (advisory locks are transaction-scoped), so a release sends nothing.
                # An open transaction is still rolled back by asyncpg before this is called.
                reset=_keep_session,
                server_settings={
                    # SQLite's busy_timeout: a row lock is waited for this long, then 503.
                    # At least 1 ms: 0 would mean waiting forever here.
                    "lock_timeout": f"{max(int(lock_timeout_ms), 1)}ms",
                    # A transaction left open (its replica paused mid-way) is ended by the
                    # server within a lease: it cannot commit after its lease was taken over.
                    "idle_in_transaction_session_timeout": f"{max(int(lease_seconds * 1000), 1)}ms",
                    "application_name": "verification-service",
                },
            )
        except TRANSIENT as exc:
            raise unavailable(exc) from exc
        store = cls(pool, url, clock, replica or f"replica-{secrets.token_hex(4)}", lease_seconds)
        try:
            async with pool.acquire() as db:
                await migrate(db)
                await register_endpoints(db, webhooks or {})
            store._webhooks = list(webhooks or {})
            await store.lease.join()
        except BaseException as exc:
            await store.lease.close()
            await pool.close()
            if isinstance(exc, TRANSIENT):
                raise unavailable(exc) from exc
            raise
        return store

    async def close(self) -> None:
        """Wait for the writes under way, hand the work over, then close the pool."""
        if self._writing:
            await asyncio.wait(set(self._writing))
        if not self._closed:
            with contextlib.suppress(StoreUnavailable):  # unreachable: the lease lapses instead
                await self.lease.leave()
        self._closed = True
        await self.lease.close()
        await self._pool.close()

    @property
    def _fence(self) -> tuple[str, int]:
        """The parameters $1 and $2 of every fenced statement."""
        return self.lease.name, self.lease.epoch

    # -- verifications -------------------------------------------------------------------------

    async def insert(
        self, v: Verification, key: str | None = None, digest: bytes = b""
    ) -> KeyHolder | Verification | None:
        """Record a new verification, held here, and its idempotency key, if any, at once.

        If the key is already taken, nothing is written and its holder is returned instead; if
        the caller has a verification pending for this number, nothing is written and it is
        returned. A replica whose lease lapsed is refused (StoreUnavailable): it is handing over.
        """

        async def write(db: asyncpg.Connection) -> KeyHolder | Verification | None:
            while True:
                if key is None:  # one statement: no transaction to open and commit around it
                    status = await db.execute(INSERT_VERIFICATION, *self._fence, *as_row(v))
                    if count(status) == 1:
                        return None
                else:
                    try:
                        async with db.transaction():
                            holder = await _claim_key(db, key, v.id, digest, v.created_at)
                            if holder is not None:
                                return holder
                            status = await db.execute(INSERT_VERIFICATION, *self._fence, *as_row(v))
                            if count(status) == 1:
                                return None
                            raise _NotInserted()  # the key's claim is rolled back
                    except _NotInserted:
                        pass
                row = await db.fetchrow(SELECT_PENDING_FOR, v.owner, v.phone)
                if row is not None:
                    return as_verification(row)
                if not await db.fetchval(f"SELECT {HELD}", *self._fence):
                    raise StoreUnavailable(
                        "This replica's lease lapsed: it is handing its work over; try again."
                    )
                # The pending one ended between the two statements: try again.

        return await self._write(write)

    async def get(self, verification_id: str) -> Verification | None:
        row = await self._read(lambda db: db.fetchrow(SELECT_VERIFICATION, verification_id))
        return as_verification(row) if row is not None else None

    async def by_idempotency_key(self, key: str) -> KeyHolder | None:
        # A key outlives its verification by at most one retention sweep: then it is unused.
        row = await self._read(
            lambda db: db.fetchrow(
                f"SELECT k.request_hash, {prefixed('v')}"
                " FROM idempotency_keys AS k JOIN verifications AS v ON v.id = k.verification_id"
                " WHERE k.key = $1",
                key,
            )
        )
        if row is None:
            return None
        return KeyHolder(as_verification(tuple(row)[1:]), bytes(row[0]))

    async def pending(
        self, after: tuple[float, str] | None = None, limit: int | None = None
    ) -> list[Verification]:
        """The pending verifications this replica holds: those of its name's earlier life.

        The others' are adopted when their lease lapses (`lease.adopt`), not read here.
        """
        start = after or (float("-inf"), "")
        rows = await self._read(
            lambda db: db.fetch(
                f"SELECT {COLUMNS} FROM verifications WHERE status = 'pending' AND holder = $1"
                " AND (expires_at, id) > ($2, $3) ORDER BY expires_at, id LIMIT $4",
                self.lease.name,
                *start,
                limit,
            )
        )
        return [as_verification(r) for r in rows]

    async def sms_sent(self, v: Verification) -> bool:
        """Checkpoint the SMS; False if the verification is no longer pending, or held here."""
        return await self._update(
            "UPDATE verifications SET sms_sent_at = $3, sms_id = $4"
            f" WHERE id = $5 AND status = 'pending' AND holder = $1 AND {HELD}",
            *self._fence,
            v.sms_sent_at,
            v.sms_id,
            v.id,
        )

    async def pending_for(self, owner: str, phone: str) -> Verification | None:
        row = await self._read(lambda db: db.fetchrow(SELECT_PENDING_FOR, owner, phone))
        return as_verification(row) if row is not None else None

    async def spent_for(self, owner: str, phone: str, now: float) -> Verification | None:
        row = await self._read(lambda db: db.fetchrow(SELECT_SPENT_FOR, owner, phone, now))
        return as_verification(row) if row is not None else None

    async def resent(
        self, verification_id: str, at: float, key: str | None = None, digest: bytes = b""
    ) -> KeyHolder | bool:
        """Not fenced: whichever replica is asked sends the code again, and records it."""

        async def write(db: asyncpg.Connection) -> KeyHolder | bool:
            if key is None:  # one statement: no transaction to open and commit around it
                return count(await db.execute(RECORD_RESEND, at, verification_id)) == 1
            try:
                async with db.transaction():
                    holder = await _claim_key(db, key, verification_id, digest, at)
                    if holder is not None:
                        return holder
                    if count(await db.execute(RECORD_RESEND, at, verification_id)) == 1:
                        return True
                    raise _NotInserted()  # the key's claim is rolled back
            except _NotInserted:
                return False

        return await self._write(write)

    async def attempted(self, before: Verification, after: Verification) -> bool:
        """Checkpoint a wrong code: attempts are spent in the database before the caller hears.

        Conditional on the row being as `before` says, so a change made meanwhile by someone
        else is never overwritten: then nothing is written and the answer is False.
        """
        return await self._update(
            "UPDATE verifications SET attempts_left = $1, attempts = $2"
            " WHERE id = $3 AND status = 'pending' AND attempts = $4",
            after.attempts_left,
            after.attempts,
            after.id,
            before.attempts,
        )

    async def shorten(self, verifications: Sequence[Verification]) -> None:
        """Bring deadlines forward (never back): a clock set back must not stretch a code's life."""
        earliest: dict[str, float] = {}
        for v in verifications:
            earliest[v.id] = min(v.expires_at, earliest.get(v.id, v.expires_at))
        if not earliest:
            return
        ids, deadlines = list(earliest), list(earliest.values())
        await self._write(lambda db: db.execute(SHORTEN, *self._fence, ids, deadlines))

    async def finish(self, decided: Sequence[Decided]) -> set[str]:
        """Write final states and their outbox records in one transaction (one statement).

        Only verifications still pending change (and, for a fenced decision, only those held
        here under a valid lease); the ids of those that did are returned, and only they get an
        outcome: a verification is decided once, whatever retries happen, on whichever replica.
        """
        first: dict[str, Decided] = {}
        for d in decided:  # the first decision of a verification wins, as it would in order
            first.setdefault(d.verification.id, d)
        if not first:
            return set()
        columns: list[list[Any]] = [[], [], [], [], [], [], [], [], []]
        for d in first.values():
            v = d.verification
            values = (
                v.id, v.status.value, v.attempts_left, v.attempts, v.completed_at, v.reason,
                d.outcome, d.fenced, d.attempts_before,
            )  # fmt: skip
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        now = self._clock()

        async def write(db: asyncpg.Connection) -> set[str]:
            rows = await db.fetch(FINISH, *self._fence, *columns, now, self._webhooks)
            applied = {row[0] for row in rows}
            if applied:
                # Here, not after the shield: counted even if the caller has given up.
                self.on_outcome()
            return applied

        return await self._write(write)

    async def agree(self, name: str, value: str) -> str:
        async def write(db: asyncpg.Connection) -> str:
            await db.execute(
                "INSERT INTO shared_settings (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO NOTHING",
                name,
                value,
            )
            agreed: str = await db.fetchval(
                "SELECT value FROM shared_settings WHERE name = $1", name
            )
            return agreed

        return await self._write(write)

    # -- the outbox -------------------------------------------------------------------------------

    async def due(self, limit: int, now: float) -> list[OutboxRecord]:
        """This replica's unsent records due by `now`: those tried again after a refusal first,
        then the others, oldest first, `limit` at most.

        None while the lease is not surely valid: a message sent to the queue cannot be taken
        back, so a replica that may have lost its records to another sends nothing.
        """
        if not self.lease.trusted:
            return []
        rows = await self._read(lambda db: db.fetch(DUE, now, limit, self.lease.name))
        return [OutboxRecord(*row) for row in rows]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        now = self._clock()

        async def write(db: asyncpg.Connection) -> None:
            await db.execute(
                "UPDATE outbox SET sent_at = $3 WHERE seq = ANY($4::bigint[]) AND sent_at IS NULL"
                f" AND holder = $1 AND {HELD}",
                *self._fence,
                now,
                list(seqs),
            )

        await self._write(write)

    async def defer(self, seq: int, until: float, error: str) -> None:
        await self._update(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4"
            f" WHERE seq = $5 AND sent_at IS NULL AND holder = $1 AND {HELD}",
            *self._fence,
            until,
            error[:MAX_ERROR_LENGTH],
            seq,
        )

    async def next_due(self) -> float | None:
        value = await self._read(
            lambda db: db.fetchval(
                "SELECT next_attempt_at FROM outbox WHERE holder = $1 AND sent_at IS NULL"
                " ORDER BY next_attempt_at LIMIT 1",
                self.lease.name,
            )
        )
        if value is None:
            return None
        if not self.lease.trusted:
            # Nothing is read while untrusted (`due`): the publisher waits a check, not a spin.
            return max(float(value), self._clock() + self.lease.check_seconds)
        return float(value)

    async def outbox_depth(self) -> tuple[int, float | None]:
        """This replica's unsent outcomes, and the creation time of the oldest of all of them.

        Counted on the index of what each replica holds, at each scrape: a count kept in memory
        would drift as other replicas adopt or purge; the sum over replicas is the outbox's depth.
        """

        async def read(db: asyncpg.Connection) -> tuple[int, float | None]:
            unsent = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE holder = $1 AND sent_at IS NULL",
                self.lease.name,
            )
            oldest = await db.fetchval(
                "SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1"
            )
            return int(unsent), oldest

        return await self._read(read)

    # -- retention ------------------------------------------------------------------------------

    async def purge(
        self, *, finished_before: float, redact_before: float, sent_before: float
    ) -> Purged:
        """One chunk of retention: mask old phone numbers (in the outbox too), delete delivered
        outcomes, drop undelivered ones older than `finished_before`, then delete finished
        verifications without an outcome left, and old idempotency keys.
        """

        async def write(db: asyncpg.Connection) -> Purged:
            async with db.transaction():
                masked = await db.fetch(REDACT_PHONES, redact_before)
                phones = {row[0]: row[1] for row in masked}
                await redact_bodies(db, "outbox", phones)
                await redact_bodies(db, "webhook_deliveries", phones)
                dropped = len(await db.fetch(DROP_UNDELIVERED, finished_before))
                touched = len(masked) + dropped
                for sql, before in (
                    (PURGE_SENT_OUTCOMES, sent_before),
                    (PURGE_FINISHED, finished_before),
                    (PURGE_IDEMPOTENCY_KEYS, finished_before),
                ):
                    touched += count(await db.execute(sql, before))
                touched += await purge_deliveries(
                    db,
                    sent_before=sent_before,
                    finished_before=finished_before,
                    now=self._clock(),
                    chunk=PURGE_CHUNK,
                )
                # The limits' slots that left their windows: an hour's margin for clock steps.
                touched += count(await db.execute(SWEEP_LIMITS, self._clock() - 3600, PURGE_CHUNK))
            return Purged(touched, dropped)

        return await self._write(write)

    # -- health, and the pool ---------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next one that succeeds."""
        return self._failing_since is None

    def _adopted_outcomes(self, count: int) -> None:
        self.on_outcome()

    async def probe(self) -> bool:
        """Try a write that changes nothing; True if the database takes writes.

        An UPDATE matching no row still needs a server that accepts writes: a standby, or a
        server in read-only mode, refuses it, where a SELECT 1 would pass.
        """
        with contextlib.suppress(StoreUnavailable):
            await self._write(
                lambda db: db.execute("UPDATE schema_version SET version = version WHERE false")
            )
        return self.healthy

    async def _update(self, sql: str, *args: Any) -> bool:
        async def write(db: asyncpg.Connection) -> bool:
            return count(await db.execute(sql, *args)) == 1

        return await self._write(write)

    async def _read(self, work: Work[T]) -> T:
        if self._closed:
            raise StoreUnavailable("The database is closed: the service is stopping.")
        try:
            async with self._pool.acquire() as db:
                return await work(db)
        except TRANSIENT as exc:
            raise unavailable(exc) from exc

    async def _write(self, work: Work[T]) -> T:
        if self._closed:
            raise StoreUnavailable("The database is closed: the service is stopping.")
        task = asyncio.ensure_future(self._run(work))
        self._writing.add(task)
        task.add_done_callback(_settled(self._writing))
        # Shielded: a caller that gives up must not stop the write, which may be committed.
        return await asyncio.shield(task)

    async def _run(self, work: Work[T]) -> T:
        try:
            async with self._pool.acquire() as db:
                result = await work(db)
        except TRANSIENT as exc:
            if self._failing_since is None:
                self._failing_since = self._clock()
            raise unavailable(exc) from exc
        self._failing_since = None
        return result


async def _keep_session(db: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to send (see `PostgresStore.open`)."""


def _settled(writing: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        writing.discard(task)
        # Retrieved, so that the write of a caller that gave up logs no "never retrieved".
        if not task.cancelled():
            task.exception()

    return done


async def _claim_key(
    db: asyncpg.Connection, key: str, verification_id: str, digest: bytes, at: float
) -> KeyHolder | None:
    """Within the caller's transaction: take `key` for `verification_id`, or name its holder.

    A replica claiming the same key meanwhile makes the INSERT wait for its commit; the key's
    row is then locked, so that two replicas finding its verification purged do not both
    take it over.
    """
    while True:
        status = await db.execute(
            "INSERT INTO idempotency_keys (key, verification_id, request_hash, created_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
            key,
            verification_id,
            digest,
            at,
        )
        if count(status) == 1:
            return None
        held = await db.fetchrow(
            "SELECT verification_id, request_hash FROM idempotency_keys WHERE key = $1 FOR UPDATE",
            key,
        )
        if held is None:  # purged between the two statements: free again, claim it
            continue
        row = await db.fetchrow(SELECT_VERIFICATION, held[0])
        if row is None:  # its verification was purged: the key is free again
            await db.execute(
                "UPDATE idempotency_keys SET verification_id = $1, request_hash = $2,"
                " created_at = $3 WHERE key = $4",
                verification_id,
                digest,
                at,
                key,
            )
            return None
        return KeyHolder(as_verification(row), bytes(held[1]))


class _NotInserted(Exception):
    """Rolls back a transaction whose last write found nothing to change: nothing is kept."""
