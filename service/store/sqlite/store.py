"""The SQLite store: verifications, their transitions, and the outbox of outcomes, in SQL.

Writes go through the group commit of `writer` (one transaction for whatever queued meanwhile,
on the one writing connection); reads use a second connection (aiosqlite), which WAL lets run
beside the writer. The schema and its migrations are in `schema`, the files on disk in `files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiosqlite

from service.errors import StoreUnavailable
from service.models import Clock, Status, Verification
from service.store.base import Decided, KeyHolder, Lease, OutboxRecord, Purged, Tally
from service.store.sqlite.files import DatabaseLock, make_private
from service.store.sqlite.schema import open_writer
from service.store.sqlite.webhooks import (
    SqliteWebhooks,
    insert_deliveries,
    purge_deliveries,
    redact_deliveries,
    register_endpoints,
)
from service.store.sqlite.writer import GroupCommit, Write, WriterThread

T = TypeVar("T")

OUTBOX_COLUMNS = "seq, verification_id, status, body, attempts"
#: Records never refused (next_attempt_at 0) in order, after those due again after a refusal.
DUE = f"""
    SELECT * FROM (
        SELECT {OUTBOX_COLUMNS} FROM outbox WHERE sent_at IS NULL
          AND next_attempt_at > 0 AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)
    UNION ALL
    SELECT * FROM (
        SELECT {OUTBOX_COLUMNS} FROM outbox WHERE sent_at IS NULL AND next_attempt_at = 0
        ORDER BY seq LIMIT ?)
"""
COLUMNS = (
    "id, phone, reference, status, salt, attempts_left, attempts, created_at, expires_at,"
    " completed_at, sms_sent_at, sms_id, reason, owner, service, code_length, resends"
)

#: A purge works in chunks of this many rows per statement, so it never holds the writer long.
PURGE_CHUNK = 200
PURGE_SENT_OUTCOMES = f"""
    DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE sent_at < ? LIMIT {PURGE_CHUNK})
"""
# Only the oldest chunk of unsent records is looked at (seq follows creation), so a sweep costs
# the same however many wait while the queue is off or down.
DROP_UNDELIVERED = f"""
    DELETE FROM outbox WHERE seq IN (
        SELECT seq FROM (
            SELECT seq, created_at FROM outbox WHERE sent_at IS NULL
            ORDER BY seq LIMIT {PURGE_CHUNK})
        WHERE created_at < ?)
"""
PURGE_IDEMPOTENCY_KEYS = f"""
    DELETE FROM idempotency_keys WHERE rowid IN (
        SELECT rowid FROM idempotency_keys WHERE created_at < ? LIMIT {PURGE_CHUNK})
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
    RETURNING id, phone
"""
# The body is ours, always JSON; json_valid only keeps a hand-edited one from failing the sweep.
REDACT_OUTCOMES = """
    UPDATE outbox SET body = json_set(body, '$.to', ?)
    WHERE verification_id = ? AND json_valid(body)
"""
#: What of a refusal's error the outbox keeps.
MAX_ERROR_LENGTH = 500


class SqliteStore(SqliteWebhooks):
    """The `Store` on one SQLite file, for one process.

    Open with `await SqliteStore.open(path, clock=...)`; close with `await store.close()`.
    """

    def __init__(
        self,
        writes: GroupCommit,
        reader: aiosqlite.Connection,
        pages: aiosqlite.Connection,
        clock: Clock,
    ) -> None:
        self._writes = writes
        self._reader = reader
        #: Reads the pending by pages (recovery): a request's read never waits behind a page.
        self._pages = pages
        self._clock = clock
        #: Held from open to close: no second process serves this database meanwhile.
        self._lock: DatabaseLock | None = None
        self._closed = False
        self._failing_since: float | None = None
        #: Called after an outcome is committed to the outbox (the publisher's wake-up).
        self.on_outcome: Callable[[], None] = lambda: None
        #: None: this process has the file to itself (`files`), so all of it is its own.
        self.lease: Lease | None = None
        #: None: the limits are counted in this process's memory.
        self.tally: Tally | None = None
        #: Unsent outcomes, so /metrics needs no count over them: counted once at open, before
        #: any write, then changed by each write that changes it.
        self._unsent = 0
        #: The webhook endpoints enabled, by name: each outcome gets a delivery for each.
        self._webhooks: list[str] = []

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        clock: Clock,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        webhooks: Mapping[str, str] | None = None,
    ) -> SqliteStore:
        # Before SQLite opens the file: a second instance touches nothing, and SQLite makes the
        # -wal and -shm files with the mode of a database file that is already private.
        lock = DatabaseLock.acquire(path)
        try:
            make_private(path)
            store = await cls._connect(path, clock, synchronous, busy_timeout_ms)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        try:
            store._webhooks = await store._write(lambda db: register_endpoints(db, webhooks or {}))
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    async def _connect(
        cls, path: str, clock: Clock, synchronous: str, busy_timeout_ms: int
    ) -> SqliteStore:
        # One thread owns the writing connection for its whole life: sqlite3 objects stay on it.
        thread = WriterThread("store-writer")
        try:
            writer = await thread.call(open_writer, path, synchronous, busy_timeout_ms)
        except BaseException:
            thread.stop()
            raise
        readers: list[aiosqlite.Connection] = []
        try:
            for _ in range(2):
                readers.append(await _reader(path, busy_timeout_ms))
        except BaseException:
            for reader in readers:
                await reader.close()
            await thread.call(writer.close)
            thread.stop()
            raise
        store = cls(GroupCommit(writer, thread), readers[0], readers[1], clock)
        try:
            # Read before open returns, so no scrape ever sees the count before it is made.
            rows = await store._read("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        except BaseException:
            await store.close()
            raise
        store._unsent = int(rows[0][0])
        return store

    async def close(self) -> None:
        """Commit what is queued, then close both connections; later writes are refused."""
        self._closed = True
        await self._writes.drain()
        await self._reader.close()
        await self._pages.close()
        await self._writes.close()
        if self._lock is not None:
            self._lock.release()

    # -- verifications -------------------------------------------------------------------------

    async def insert(
        self, v: Verification, key: str | None = None, digest: bytes = b""
    ) -> KeyHolder | None:
        """Record a new verification and its idempotency key, if any, in one transaction.

        If the key is already taken, nothing is written and its holder is returned instead.
        """

        def write(db: sqlite3.Connection) -> KeyHolder | None:
            if key is not None:
                holder = _claim_key(db, key, v.id, digest, v.created_at)
                if holder is not None:
                    return holder
            db.execute(
                f"INSERT INTO verifications ({COLUMNS}) VALUES ({', '.join('?' * 17)})",
                _row(v),
            )
            return None

        return await self._write(write)

    async def get(self, verification_id: str) -> Verification | None:
        return await self._select_one("id = ?", verification_id)

    async def by_idempotency_key(self, key: str) -> KeyHolder | None:
        rows = await self._read(
            "SELECT verification_id, request_hash FROM idempotency_keys WHERE key = ?", (key,)
        )
        if not rows:
            return None
        verification_id, digest = rows[0]
        v = await self.get(verification_id)
        # A key outlives its verification by at most one retention sweep: then it is unused.
        return KeyHolder(v, bytes(digest)) if v is not None else None

    async def pending(
        self, after: tuple[float, str] | None = None, limit: int | None = None
    ) -> list[Verification]:
        # The pending index is on (expires_at, id): each page is a range of it, however many.
        start = after or (float("-inf"), "")
        rows = await self._read(
            f"SELECT {COLUMNS} FROM verifications WHERE status = 'pending'"
            " AND (expires_at, id) > (?, ?) ORDER BY expires_at, id LIMIT ?",
            (*start, -1 if limit is None else limit),
            on=self._pages,
        )
        return [_verification(r) for r in rows]

    async def pending_for(self, owner: str, phone: str) -> Verification | None:
        # Alone on its file the orchestrator knows its pending ones by number: this walks them,
        # and is not on any request's path.
        rows = await self._read(
            f"SELECT {COLUMNS} FROM verifications"
            " WHERE status = 'pending' AND owner = ? AND phone = ?",
            (owner, phone),
        )
        return _verification(rows[0]) if rows else None

    async def spent_for(self, owner: str, phone: str, now: float) -> Verification | None:
        rows = await self._read(
            f"SELECT {COLUMNS} FROM verifications WHERE owner = ? AND phone = ?"
            " AND status != 'pending' ORDER BY created_at DESC LIMIT 1",
            (owner, phone),
        )
        latest = _verification(rows[0]) if rows else None
        return latest if latest is not None and _spent(latest, now) else None

    async def sms_sent(self, v: Verification) -> bool:
        """Checkpoint the SMS; False if the verification is no longer pending."""
        return await self._update(
            "UPDATE verifications SET sms_sent_at = ?, sms_id = ?"
            " WHERE id = ? AND status = 'pending'",
            (v.sms_sent_at, v.sms_id, v.id),
        )

    async def resent(
        self, verification_id: str, at: float, key: str | None = None, digest: bytes = b""
    ) -> KeyHolder | bool:
        def write(db: sqlite3.Connection) -> KeyHolder | bool:
            # A savepoint, so a key claimed for a verification found ended is taken back.
            db.execute("SAVEPOINT resent")
            if key is not None:
                holder = _claim_key(db, key, verification_id, digest, at)
                if holder is not None:
                    db.execute("RELEASE resent")
                    return holder
            applied = db.execute(
                "UPDATE verifications SET resends = ltrim(resends || ',' || ?, ',')"
                " WHERE id = ? AND status = 'pending'",
                (repr(at), verification_id),
            ).rowcount
            if applied != 1:
                db.execute("ROLLBACK TO resent")
            db.execute("RELEASE resent")
            return applied == 1

        return await self._write(write)

    async def attempted(self, before: Verification, after: Verification) -> bool:
        """Checkpoint a wrong code: attempts are spent on disk before the caller hears of it.

        Conditional on the row being as `before` says, so a change made meanwhile by someone
        else is never overwritten: then nothing is written and the answer is False.
        """
        return await self._update(
            "UPDATE verifications SET attempts_left = ?, attempts = ?"
            " WHERE id = ? AND status = 'pending' AND attempts = ?",
            (after.attempts_left, after.attempts, after.id, before.attempts),
        )

    async def shorten(self, verifications: Sequence[Verification]) -> None:
        """Bring deadlines forward (never back): a clock set back must not stretch a code's life."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE verifications SET expires_at = ?"
                " WHERE id = ? AND status = 'pending' AND expires_at > ?",
                [(v.expires_at, v.id, v.expires_at) for v in verifications],
            )

        await self._write(write)

    async def finish(self, decided: Sequence[Decided]) -> set[str]:
        """Write final states and their outbox records in one transaction.

        Only verifications still pending on disk change; the ids of those that did are returned,
        and only they get an outcome: a verification is decided once, whatever retries happen.
        """
        now = self._clock()
        webhooks = tuple(self._webhooks)

        def write(db: sqlite3.Connection) -> set[str]:
            applied = set()
            for d in decided:
                v = d.verification
                cursor = db.execute(
                    "UPDATE verifications SET status = ?, attempts_left = ?, attempts = ?,"
                    " completed_at = ?, reason = ? WHERE id = ? AND status = 'pending'",
                    (v.status.value, v.attempts_left, v.attempts, v.completed_at, v.reason, v.id),
                )
                if cursor.rowcount != 1:
                    continue
                applied.add(v.id)
                db.execute(
                    "INSERT INTO outbox (verification_id, status, body, created_at)"
                    " VALUES (?,?,?,?) ON CONFLICT (verification_id) DO NOTHING",
                    (v.id, v.status.value, d.outcome, now),
                )
                insert_deliveries(db, webhooks, v.id, d.outcome, now)
            return applied

        applied = await self._write(write)
        if applied:
            self._unsent += len(applied)  # one outbox record each
            self.on_outcome()
        return applied

    async def agree(self, name: str, value: str) -> str:
        return value  # one process per file: there is no one to disagree with

    # -- the outbox -------------------------------------------------------------------------------

    async def due(self, limit: int, now: float) -> list[OutboxRecord]:
        """Unsent records due by `now`: those tried again after a refusal first, then the others,
        oldest first. Both halves walk the index `outbox_due` from a start, so a read costs
        `limit` rows however many records wait deferred or due.
        """
        rows = await self._read(DUE, (now, limit, limit))
        return [OutboxRecord(*row) for row in rows[:limit]]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        now = self._clock()

        def write(db: sqlite3.Connection) -> int:
            cursor = db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE seq = ? AND sent_at IS NULL",
                [(now, s) for s in seqs],
            )
            return cursor.rowcount

        self._unsent -= await self._write(write)

    async def defer(self, seq: int, until: float, error: str) -> None:
        await self._update(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE seq = ? AND sent_at IS NULL",
            (until, error[:MAX_ERROR_LENGTH], seq),
        )

    async def next_due(self) -> float | None:
        rows = await self._read(
            "SELECT next_attempt_at FROM outbox WHERE sent_at IS NULL"
            " ORDER BY next_attempt_at LIMIT 1"
        )
        return float(rows[0][0]) if rows else None

    async def outbox_depth(self) -> tuple[int, float | None]:
        """Unsent outcomes and the creation time of the oldest of them; no scan of them."""
        rows = await self._read(
            "SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1"
        )
        return self._unsent, rows[0][0] if rows else None

    # -- retention ------------------------------------------------------------------------------

    async def purge(
        self, *, finished_before: float, redact_before: float, sent_before: float
    ) -> Purged:
        """One chunk of retention: mask old phone numbers (in the outbox too), delete delivered
        outcomes, drop undelivered ones older than `finished_before`, then delete finished
        verifications without an outcome left, and old idempotency keys.
        """

        now = self._clock()

        def write(db: sqlite3.Connection) -> Purged:
            masked = db.execute(REDACT_PHONES, (redact_before,)).fetchall()
            db.executemany(REDACT_OUTCOMES, [(phone, vid) for vid, phone in masked])
            redact_deliveries(db, masked)
            dropped = db.execute(DROP_UNDELIVERED, (finished_before,)).rowcount
            touched = len(masked) + dropped
            for sql, params in (
                (PURGE_SENT_OUTCOMES, (sent_before,)),
                (PURGE_FINISHED, (finished_before,)),
                (PURGE_IDEMPOTENCY_KEYS, (finished_before,)),
            ):
                touched += max(db.execute(sql, params).rowcount, 0)
            touched += purge_deliveries(
                db,
                sent_before=sent_before,
                finished_before=finished_before,
                now=now,
                chunk=PURGE_CHUNK,
            )
            return Purged(touched, dropped)

        purged = await self._write(write)
        self._unsent -= purged.dropped
        return purged

    # -- health, and the writer -------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next one that succeeds."""
        return self._failing_since is None

    async def probe(self) -> bool:
        """Try to take the write lock (and give it back); True if the database takes writes."""
        with contextlib.suppress(StoreUnavailable):
            await self._write(lambda db: None)
        return self.healthy

    async def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        return bool(await self._write(lambda db: db.execute(sql, params).rowcount == 1))

    async def _read(
        self, sql: str, params: tuple[Any, ...] = (), *, on: aiosqlite.Connection | None = None
    ) -> list[Any]:
        try:
            return list(await (on or self._reader).execute_fetchall(sql, params))
        except sqlite3.DatabaseError as exc:
            raise _unavailable(exc) from exc

    async def _select_one(self, where: str, value: Any) -> Verification | None:
        rows = await self._read(f"SELECT {COLUMNS} FROM verifications WHERE {where}", (value,))
        return _verification(rows[0]) if rows else None

    async def _write(self, write: Write[T]) -> T:
        if self._closed:
            raise StoreUnavailable("The database is closed: the service is stopping.")
        future = self._writes.submit(write)
        try:
            # Shielded: a caller that gives up must not stop the write, which may be committed.
            result = await asyncio.shield(future)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise  # a bug, not the database's state: no retry would help
            if self._failing_since is None:
                self._failing_since = self._clock()
            raise _unavailable(exc) from exc
        self._failing_since = None
        return result


# -- on the writer thread -------------------------------------------------------------------------


def _claim_key(
    db: sqlite3.Connection, key: str, verification_id: str, digest: bytes, at: float
) -> KeyHolder | None:
    cursor = db.execute(
        "INSERT INTO idempotency_keys (key, verification_id, request_hash, created_at)"
        " VALUES (?,?,?,?) ON CONFLICT (key) DO NOTHING",
        (key, verification_id, digest, at),
    )
    if cursor.rowcount == 1:
        return None
    held_by, held_digest = db.execute(
        "SELECT verification_id, request_hash FROM idempotency_keys WHERE key = ?", (key,)
    ).fetchone()
    row = db.execute(f"SELECT {COLUMNS} FROM verifications WHERE id = ?", (held_by,)).fetchone()
    if row is None:  # its verification was purged: the key is free again
        db.execute(
            "UPDATE idempotency_keys SET verification_id = ?, request_hash = ?, created_at = ?"
            " WHERE key = ?",
            (verification_id, digest, at, key),
        )
        return None
    return KeyHolder(_verification(row), bytes(held_digest))


async def _reader(path: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    reader = await aiosqlite.connect(path, isolation_level=None)
    try:
        # As for the writer: wait for a lock rather than fail (a checkpoint may hold one).
        await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except BaseException:
        await reader.close()
        raise
    return reader


def _unavailable(exc: sqlite3.DatabaseError) -> StoreUnavailable:
    # The message names the cause (locked, full, I/O) without any of the data.
    return StoreUnavailable(f"The database is unavailable ({exc}); try again shortly.")


def _row(v: Verification) -> tuple[Any, ...]:
    # Spelled out: dataclasses.astuple deep-copies, and this runs for every start.
    return (
        v.id, v.phone, v.reference, v.status.value, v.salt, v.attempts_left, v.attempts,
        v.created_at, v.expires_at, v.completed_at, v.sms_sent_at, v.sms_id, v.reason, v.owner,
        v.service, v.code_length, times_text(v.resends),
    )  # fmt: skip


#: By their stored value: a dict lookup where the Enum's call costs a microsecond per row.
_STATUSES = {status.value: status for status in Status}


def _verification(row: Any) -> Verification:
    # Columns are in field order; the status and the resends need turning back into theirs.
    # The owner and the service are a few strings shared by a million: interned, kept once.
    # Spelled out, not sliced and starred: recovery reads a million (a third faster).
    return Verification(
        row[0], row[1], row[2], _STATUSES[row[3]], row[4], row[5], row[6], row[7], row[8],
        row[9], row[10], row[11], row[12], sys.intern(row[13]), sys.intern(row[14]), row[15],
        text_times(row[16]) if row[16] else (),
    )  # fmt: skip


def _spent(v: Verification, now: float) -> bool:
    return v.status is Status.MAX_ATTEMPTS_REACHED and v.expires_at > now


def times_text(times: tuple[float, ...]) -> str:
    return ",".join(repr(t) for t in times)


def text_times(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",")) if text else ()
