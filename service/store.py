"""The SQLite store: verifications, their transitions, and the outbox of outcomes.

Writes go through one writer task that commits whatever has queued up meanwhile in a single
transaction (group commit): every caller is answered only after its write is on disk, yet a
burst of transitions costs one fsync, not one each. Reads use a second connection, which WAL
lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiosqlite

from notifier.messages import OutboxRecord, outcome_body
from service.models import Status, Verification, rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")
Write = Callable[[aiosqlite.Connection], Awaitable[T]]

#: Ordered migrations; the database records how many it has applied.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE verifications (
        id TEXT PRIMARY KEY,
        phone TEXT NOT NULL,
        reference TEXT,
        status TEXT NOT NULL,
        salt BLOB NOT NULL,
        attempts_left INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        completed_at REAL,
        sms_sent_at REAL,
        sms_id TEXT,
        reason TEXT,
        idempotency_key TEXT UNIQUE,
        phone_redacted INTEGER NOT NULL DEFAULT 0
    );
    -- Recovery reads only pending rows; a partial index keeps that cheap with millions finished.
    CREATE INDEX verifications_pending ON verifications (id) WHERE status = 'pending';
    -- Retention walks finished rows by age; the second index forgets rows once masked.
    CREATE INDEX verifications_finished ON verifications (completed_at) WHERE status != 'pending';
    CREATE INDEX verifications_unredacted ON verifications (completed_at)
        WHERE status != 'pending' AND phone_redacted = 0;
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        -- UNIQUE: a verification has exactly one outcome, whatever retries happen above.
        verification_id TEXT NOT NULL UNIQUE REFERENCES verifications (id),
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
    CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
    """,
)

COLUMNS = (
    "id, phone, reference, status, salt, attempts_left, attempts, created_at, expires_at,"
    " completed_at, sms_sent_at, sms_id, reason, idempotency_key"
)

#: A purge works in chunks of this many rows, so it never holds the writer for long.
PURGE_CHUNK = 1000
PURGE_SENT_OUTCOMES = f"""
    DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE sent_at < ? LIMIT {PURGE_CHUNK})
"""
PURGE_FINISHED = f"""
    DELETE FROM verifications WHERE rowid IN (
        SELECT rowid FROM verifications
        WHERE status != 'pending' AND completed_at < ?
          AND NOT EXISTS (SELECT 1 FROM outbox WHERE verification_id = verifications.id)
        LIMIT {PURGE_CHUNK})
"""
# Keeps the first two and the last two digits: enough for support, too little to call.
REDACT_PHONES = f"""
    UPDATE verifications
    SET phone = substr(phone, 1, 3) || '*****' || substr(phone, -2), phone_redacted = 1
    WHERE rowid IN (
        SELECT rowid FROM verifications
        WHERE status != 'pending' AND phone_redacted = 0 AND completed_at < ?
        LIMIT {PURGE_CHUNK})
"""

#: How many queued writes one transaction takes at most.
MAX_BATCH = 512


class Store:
    """Durable state. Open with `await Store.open(path)`; close with `await store.close()`."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._queue: asyncio.Queue[tuple[Write[Any], asyncio.Future[Any]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")
        #: Called after an outcome is committed to the outbox (the publisher's wake-up).
        self.on_outcome: Callable[[], None] = lambda: None

    @classmethod
    async def open(cls, path: str, *, synchronous: str = "FULL") -> Store:
        writer = await _connect(path, synchronous)
        await _migrate(writer)
        reader = await _connect(path, synchronous)
        return cls(writer, reader)

    async def close(self) -> None:
        """Commit what is queued, then close both connections."""
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._reader.close()
        await self._writer.close()

    # -- verifications -------------------------------------------------------------------------

    async def insert(self, v: Verification) -> Verification | None:
        """Record a new verification; if its idempotency key is taken, return the holder instead."""

        async def write(db: aiosqlite.Connection) -> Verification | None:
            cursor = await db.execute(
                f"INSERT INTO verifications ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                _row(v),
            )
            if cursor.rowcount == 1:
                return None
            return await _select_one(db, "idempotency_key = ?", v.idempotency_key)

        return await self._write(write)

    async def get(self, verification_id: str) -> Verification | None:
        return await _select_one(self._reader, "id = ?", verification_id)

    async def by_idempotency_key(self, key: str) -> Verification | None:
        return await _select_one(self._reader, "idempotency_key = ?", key)

    async def pending(self) -> list[Verification]:
        rows = await self._reader.execute_fetchall(
            f"SELECT {COLUMNS} FROM verifications WHERE status = 'pending'"
        )
        return [_verification(r) for r in rows]

    async def sms_sent(self, v: Verification) -> None:
        await self._execute(
            "UPDATE verifications SET sms_sent_at = ?, sms_id = ?"
            " WHERE id = ? AND status = 'pending'",
            (v.sms_sent_at, v.sms_id, v.id),
        )

    async def attempted(self, v: Verification) -> None:
        """Checkpoint a wrong code: attempts are spent on disk before the caller hears of it."""
        await self._execute(
            "UPDATE verifications SET attempts_left = ?, attempts = ?"
            " WHERE id = ? AND status = 'pending'",
            (v.attempts_left, v.attempts, v.id),
        )

    async def finish(self, finished: Sequence[Verification]) -> None:
        """Write final states and their outbox records in one transaction."""

        async def write(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "UPDATE verifications SET status = ?, attempts_left = ?, attempts = ?,"
                " completed_at = ?, reason = ? WHERE id = ? AND status = 'pending'",
                [
                    (v.status.value, v.attempts_left, v.attempts, v.completed_at, v.reason, v.id)
                    for v in finished
                ],
            )
            now = time.time()
            await db.executemany(
                "INSERT INTO outbox (verification_id, status, body, created_at) VALUES (?,?,?,?)"
                " ON CONFLICT (verification_id) DO NOTHING",
                [(v.id, v.status.value, _outcome(v), now) for v in finished],
            )

        await self._write(write)
        self.on_outcome()

    # -- the outbox (notifier.publisher.Outbox) ---------------------------------------------------

    async def unsent(self, limit: int) -> list[OutboxRecord]:
        rows = await self._reader.execute_fetchall(
            "SELECT seq, verification_id, status, body FROM outbox WHERE sent_at IS NULL"
            " ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [OutboxRecord(seq=r[0], verification_id=r[1], status=r[2], body=r[3]) for r in rows]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        now = time.time()

        async def write(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE seq = ?", [(now, s) for s in seqs]
            )

        await self._write(write)

    async def outbox_depth(self) -> tuple[int, float | None]:
        """Unsent outcomes and the creation time of the oldest of them."""
        rows = await self._reader.execute_fetchall(
            "SELECT count(*), min(created_at) FROM outbox WHERE sent_at IS NULL"
        )
        count, oldest = next(iter(rows))
        return int(count), oldest

    # -- retention ------------------------------------------------------------------------------

    async def purge(
        self, *, finished_before: float, redact_before: float, sent_before: float
    ) -> int:
        """Delete old finished rows and delivered outcomes, mask old phone numbers; one chunk.

        Returns how many rows it touched, so the caller can come back while there is more.
        Outcomes not yet delivered are kept, and so is their verification; a delivered outcome
        goes no later than its verification.
        """

        async def write(db: aiosqlite.Connection) -> int:
            touched = 0
            for sql, params in (
                (PURGE_SENT_OUTCOMES, (min(sent_before, finished_before),)),
                (PURGE_FINISHED, (finished_before,)),
                (REDACT_PHONES, (redact_before,)),
            ):
                cursor = await db.execute(sql, params)
                touched += max(cursor.rowcount, 0)
            return touched

        return await self._write(write)

    # -- the writer -------------------------------------------------------------------------------

    async def _execute(self, sql: str, params: Iterable[Any]) -> None:
        async def write(db: aiosqlite.Connection) -> None:
            await db.execute(sql, tuple(params))

        await self._write(write)

    async def _write(self, write: Write[T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((write, future))
        # Shielded: a caller that gives up must not stop the write, which may already be committed.
        return await asyncio.shield(future)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception:
                # One bad write must not sink the others that shared its transaction.
                for item in batch:
                    await self._commit_alone(item)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[Write[Any], asyncio.Future[Any]]]) -> None:
        # IMMEDIATE takes the write lock up front, so the transaction never fails half-way on it.
        await self._writer.execute("BEGIN IMMEDIATE")
        try:
            results = [await write(self._writer) for write, _ in batch]
            await self._writer.commit()
        except BaseException:
            await self._writer.rollback()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _commit_alone(self, item: tuple[Write[Any], asyncio.Future[Any]]) -> None:
        try:
            await self._commit([item])
        except Exception as exc:
            log.exception("write failed and was rolled back")
            if not item[1].done():
                item[1].set_exception(exc)


async def _connect(path: str, synchronous: str) -> aiosqlite.Connection:
    # isolation_level=None: transactions are begun explicitly, as IMMEDIATE, by the writer.
    db = await aiosqlite.connect(path, isolation_level=None)
    # WAL: readers never block the writer, and a commit is one append to the log.
    await db.execute("PRAGMA journal_mode = WAL")
    # FULL syncs the log on every commit, so an acknowledged transition survives power loss too.
    await db.execute(f"PRAGMA synchronous = {synchronous}")
    # Another process holding the lock (a second instance by mistake) waits instead of failing.
    await db.execute("PRAGMA busy_timeout = 5000")
    await db.execute("PRAGMA foreign_keys = ON")
    return db


async def _migrate(db: aiosqlite.Connection) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
    version = rows[0][0] if rows else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.execute("BEGIN IMMEDIATE")
        for statement in _statements(script):
            await db.execute(statement)
        await db.execute("DELETE FROM schema_version")
        await db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        await db.commit()
        log.info("database migrated to version %d", number)


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def _select_one(db: aiosqlite.Connection, where: str, value: Any) -> Verification | None:
    rows = list(
        await db.execute_fetchall(f"SELECT {COLUMNS} FROM verifications WHERE {where}", (value,))
    )
    return _verification(rows[0]) if rows else None


def _row(v: Verification) -> tuple[Any, ...]:
    return dataclasses.astuple(v)


def _verification(row: Any) -> Verification:
    # Columns are in field order; only the status needs turning back into its enum.
    return Verification(*row[:3], Status(row[3]), *row[4:])  # type: ignore[call-arg]


def _outcome(v: Verification) -> str:
    assert v.completed_at is not None
    return outcome_body(
        id=v.id,
        status=v.status.value,
        to=v.phone,
        reference=v.reference,
        attempts=v.attempts,
        created_at=rfc3339(v.created_at),
        completed_at=rfc3339(v.completed_at),
        reason=v.reason,
    )
