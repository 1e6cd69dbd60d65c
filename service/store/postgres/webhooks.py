"""The PostgreSQL store's webhook outbox: SQLite's (`sqlite.webhooks`), held like the SQS outbox.

A delivery is written by `FINISH` in the statement that records the final state, held by the
replica that decided it (if its lease holds; else by no one, until one adopts it), and only its
holder delivers it, reading and writing under its lease's fence, as it publishes to SQS: where
replicas share the database, one outcome reaches each endpoint from one replica at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from service.models import Clock
from service.store.base import WebhookBacklog, WebhookDelivery
from service.store.postgres.lease import PostgresLease, valid
from service.store.postgres.rows import count

T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[T]]

HELD = valid("$1", "$2")
MAX_ERROR_LENGTH = 500
COLUMNS = "seq, verification_id, body, created_at, attempts"
DUE = f"""
    SELECT {COLUMNS} FROM webhook_deliveries
    WHERE holder = $1 AND endpoint = $2 AND finished_at IS NULL AND next_attempt_at <= $3
    ORDER BY next_attempt_at, seq LIMIT $4
"""
FINISH = f"""
    UPDATE webhook_deliveries SET result = $3, finished_at = $4,
        last_error = coalesce($5, last_error)
    WHERE seq = $6 AND finished_at IS NULL AND holder = $1 AND {HELD}
"""
FAILED = f"""
    UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4
    WHERE seq = $5 AND finished_at IS NULL AND holder = $1 AND {HELD}
"""
REGISTER = """
    INSERT INTO webhook_endpoints AS e (name, url) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET url = excluded.url,
        disabled_at = CASE WHEN e.url = excluded.url THEN e.disabled_at END,
        disabled_reason = CASE WHEN e.url = excluded.url THEN e.disabled_reason END
"""
PURGE_FINISHED = """
    DELETE FROM webhook_deliveries WHERE seq IN (
        SELECT seq FROM webhook_deliveries WHERE finished_at < $1 LIMIT $2)
"""


async def register_endpoints(db: asyncpg.Connection, endpoints: Mapping[str, str]) -> None:
    """Record the configured endpoints; one disabled at another URL is enabled again."""
    for name, url in endpoints.items():
        await db.execute(REGISTER, name, url)


#: As SQLite's: outcomes still undelivered when finished verifications go are given up.
GIVE_UP = """
    UPDATE webhook_deliveries SET result = 'dropped', finished_at = $1
    WHERE seq IN (SELECT seq FROM webhook_deliveries
                  WHERE finished_at IS NULL AND created_at < $2 LIMIT $3)
"""


async def purge_deliveries(
    db: asyncpg.Connection, *, sent_before: float, finished_before: float, now: float, chunk: int
) -> int:
    given_up: str = await db.execute(GIVE_UP, now, finished_before, chunk)
    status: str = await db.execute(PURGE_FINISHED, sent_before, chunk)
    return count(given_up) + count(status)


class PostgresWebhooks:
    """`WebhookOutbox` for `PostgresStore`, which provides the pool, the lease and the clock."""

    _clock: Clock
    lease: PostgresLease

    async def _read(self, work: Work[T]) -> T:
        raise NotImplementedError

    async def _write(self, work: Work[T]) -> T:
        raise NotImplementedError

    async def webhooks_due(self, endpoint: str, limit: int, now: float) -> list[WebhookDelivery]:
        # Nothing while the lease is not surely valid: a POST cannot be taken back.
        if not self.lease.trusted:
            return []
        rows = await self._read(lambda db: db.fetch(DUE, self.lease.name, endpoint, now, limit))
        return [WebhookDelivery(*row) for row in rows]

    async def webhook_delivered(self, seq: int) -> None:
        await self._fenced(FINISH, "delivered", self._clock(), None, seq)

    async def webhook_failed(self, seq: int, until: float, error: str) -> None:
        await self._fenced(FAILED, until, error[:MAX_ERROR_LENGTH], seq)

    async def webhook_dropped(self, seq: int, error: str) -> None:
        await self._fenced(FINISH, "dropped", self._clock(), error[:MAX_ERROR_LENGTH], seq)

    async def webhook_next_due(self, endpoint: str) -> float | None:
        value = await self._read(
            lambda db: db.fetchval(
                "SELECT next_attempt_at FROM webhook_deliveries WHERE holder = $1"
                " AND endpoint = $2 AND finished_at IS NULL ORDER BY next_attempt_at LIMIT 1",
                self.lease.name,
                endpoint,
            )
        )
        if value is None:
            return None
        if not self.lease.trusted:
            return max(float(value), self._clock() + self.lease.check_seconds)
        return float(value)

    async def disable_webhook(self, endpoint: str, reason: str) -> int:
        """Every replica's deliveries to it are dropped: the receiver said it is gone for good."""
        now = self._clock()

        async def write(db: asyncpg.Connection) -> int:
            async with db.transaction():
                await db.execute(
                    "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2"
                    " WHERE name = $3",
                    now,
                    reason[:MAX_ERROR_LENGTH],
                    endpoint,
                )
                status: str = await db.execute(
                    "UPDATE webhook_deliveries SET result = 'disabled', finished_at = $1"
                    " WHERE endpoint = $2 AND finished_at IS NULL",
                    now,
                    endpoint,
                )
            return int(status.rpartition(" ")[2])

        return await self._write(write)

    async def webhook_backlog(self, endpoint: str) -> WebhookBacklog:
        """The endpoint's undelivered outcomes, every replica's: the same on each replica."""

        async def read(db: asyncpg.Connection) -> WebhookBacklog:
            count = await db.fetchval(
                "SELECT count(*) FROM webhook_deliveries"
                " WHERE endpoint = $1 AND finished_at IS NULL",
                endpoint,
            )
            oldest = await db.fetchval(
                "SELECT created_at FROM webhook_deliveries"
                " WHERE endpoint = $1 AND finished_at IS NULL ORDER BY seq LIMIT 1",
                endpoint,
            )
            disabled = await db.fetchval(
                "SELECT disabled_at IS NOT NULL FROM webhook_endpoints WHERE name = $1", endpoint
            )
            return WebhookBacklog(int(count), oldest, bool(disabled))

        return await self._read(read)

    async def _fenced(self, sql: str, *args: Any) -> None:
        fence = (self.lease.name, self.lease.epoch)
        await self._write(lambda db: db.execute(sql, *fence, *args))
