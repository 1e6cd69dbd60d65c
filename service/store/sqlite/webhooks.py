"""The SQLite store's webhook outbox: one delivery per outcome and endpoint, in SQL.

`SqliteStore.finish` writes the deliveries (`insert_deliveries`) in the transaction that records
the final state; the mixin here is what each endpoint's deliverer reads and writes. Endpoints are
registered at open (`register_endpoints`): a disabled one (it answered 410) stays disabled, and
gets no outcome, until its URL changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from service.models import Clock
from service.store.base import WebhookBacklog, WebhookDelivery

#: What of a failure's error a delivery keeps.
MAX_ERROR_LENGTH = 500
COLUMNS = "seq, verification_id, body, created_at, attempts"
# Never tried (next_attempt_at 0) first, in order, then those due again: one walk of the index
# `webhook_deliveries_due` from its start, so a read costs `limit` rows however many wait.
DUE = f"""
    SELECT {COLUMNS} FROM webhook_deliveries
    WHERE endpoint = ? AND finished_at IS NULL AND next_attempt_at <= ?
    ORDER BY next_attempt_at, seq LIMIT ?
"""
INSERT = """
    INSERT INTO webhook_deliveries (verification_id, endpoint, body, created_at)
    VALUES (?,?,?,?) ON CONFLICT (verification_id, endpoint) DO NOTHING
"""
FINISH = """
    UPDATE webhook_deliveries SET result = ?, finished_at = ?, last_error = coalesce(?, last_error)
    WHERE seq = ? AND finished_at IS NULL
"""
#: Retention: finished deliveries (delivered or given up) go after `sent_before`, in chunks.
PURGE_FINISHED = """
    DELETE FROM webhook_deliveries WHERE seq IN (
        SELECT seq FROM webhook_deliveries WHERE finished_at < ? LIMIT ?)
"""
REDACT = """
    UPDATE webhook_deliveries SET body = json_set(body, '$.to', ?)
    WHERE verification_id = ? AND json_valid(body)
"""


def register_endpoints(db: sqlite3.Connection, endpoints: Mapping[str, str]) -> list[str]:
    """Record the configured endpoints (name -> URL); the names of those enabled.

    An endpoint disabled at another URL is enabled again: its receiver was moved or fixed.
    """
    for name, url in endpoints.items():
        db.execute(
            "INSERT INTO webhook_endpoints (name, url) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
            " SET url = excluded.url,"
            " disabled_at = CASE WHEN url = excluded.url THEN disabled_at END,"
            " disabled_reason = CASE WHEN url = excluded.url THEN disabled_reason END",
            (name, url),
        )
    disabled = {
        row[0]
        for row in db.execute("SELECT name FROM webhook_endpoints WHERE disabled_at IS NOT NULL")
    }
    return [name for name in endpoints if name not in disabled]


def insert_deliveries(
    db: sqlite3.Connection, endpoints: Sequence[str], verification_id: str, body: str, now: float
) -> None:
    """Within `finish`'s transaction: the outcome, once for each enabled endpoint."""
    if not endpoints:  # the usual case, on every finish: not even a statement
        return
    db.executemany(INSERT, [(verification_id, name, body, now) for name in endpoints])


#: Outcomes still undelivered when finished verifications go (an endpoint taken out of the
#: configuration, whose deliverer is gone) are given up, then purged as the others.
GIVE_UP = """
    UPDATE webhook_deliveries SET result = 'dropped', finished_at = ?
    WHERE seq IN (SELECT seq FROM webhook_deliveries
                  WHERE finished_at IS NULL AND created_at < ? LIMIT ?)
"""


def purge_deliveries(
    db: sqlite3.Connection, *, sent_before: float, finished_before: float, now: float, chunk: int
) -> int:
    given_up = max(db.execute(GIVE_UP, (now, finished_before, chunk)).rowcount, 0)
    return given_up + max(db.execute(PURGE_FINISHED, (sent_before, chunk)).rowcount, 0)


def redact_deliveries(db: sqlite3.Connection, masked: Sequence[tuple[str, str]]) -> None:
    """Mask `to` in the deliveries of verifications just masked: (id, masked phone) pairs."""
    db.executemany(REDACT, [(phone, vid) for vid, phone in masked])


class SqliteWebhooks:
    """`WebhookOutbox` for `SqliteStore`, which provides the reads, the writes and the clock."""

    _clock: Clock
    #: The endpoints enabled: those outcomes are written for. One process per file: this list is
    #: the truth, kept in the database for the next start.
    _webhooks: list[str]

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    async def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        raise NotImplementedError

    async def _write(self, write: Any) -> Any:
        raise NotImplementedError

    async def webhooks_due(self, endpoint: str, limit: int, now: float) -> list[WebhookDelivery]:
        rows = await self._read(DUE, (endpoint, now, limit))
        return [WebhookDelivery(*row) for row in rows]

    async def webhook_delivered(self, seq: int) -> None:
        await self._update(FINISH, ("delivered", self._clock(), None, seq))

    async def webhook_failed(self, seq: int, until: float, error: str) -> None:
        await self._update(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
            " last_error = ? WHERE seq = ? AND finished_at IS NULL",
            (until, error[:MAX_ERROR_LENGTH], seq),
        )

    async def webhook_dropped(self, seq: int, error: str) -> None:
        await self._update(FINISH, ("dropped", self._clock(), error[:MAX_ERROR_LENGTH], seq))

    async def webhook_next_due(self, endpoint: str) -> float | None:
        rows = await self._read(
            "SELECT next_attempt_at FROM webhook_deliveries"
            " WHERE endpoint = ? AND finished_at IS NULL ORDER BY next_attempt_at LIMIT 1",
            (endpoint,),
        )
        return float(rows[0][0]) if rows else None

    async def disable_webhook(self, endpoint: str, reason: str) -> int:
        now = self._clock()

        def write(db: sqlite3.Connection) -> int:
            db.execute(
                "UPDATE webhook_endpoints SET disabled_at = ?, disabled_reason = ? WHERE name = ?",
                (now, reason[:MAX_ERROR_LENGTH], endpoint),
            )
            cursor = db.execute(
                "UPDATE webhook_deliveries SET result = 'disabled', finished_at = ?"
                " WHERE endpoint = ? AND finished_at IS NULL",
                (now, endpoint),
            )
            return cursor.rowcount

        dropped: int = await self._write(write)
        if endpoint in self._webhooks:
            self._webhooks.remove(endpoint)
        return dropped

    async def webhook_backlog(self, endpoint: str) -> WebhookBacklog:
        # Both on the partial indexes of undelivered rows: what waits, not what was delivered.
        [(count,)] = await self._read(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint = ? AND finished_at IS NULL",
            (endpoint,),
        )
        oldest = await self._read(
            "SELECT created_at FROM webhook_deliveries WHERE endpoint = ? AND finished_at IS NULL"
            " ORDER BY seq LIMIT 1",
            (endpoint,),
        )
        disabled = await self._read(
            "SELECT 1 FROM webhook_endpoints WHERE name = ? AND disabled_at IS NOT NULL",
            (endpoint,),
        )
        return WebhookBacklog(int(count), oldest[0][0] if oldest else None, bool(disabled))
