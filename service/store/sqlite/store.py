"""The SQLite store: verifications, their transitions, and the outbox of outcomes.

Writes go through one writer thread that commits whatever has queued up meanwhile in a single
transaction (group commit): every caller is answered only after its write is on disk, yet a
burst of transitions costs one fsync, and one trip to the thread, not one each. Reads use a
second connection (aiosqlite), which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite

from notifier.messages import OutboxRecord, outcome_body
from service.errors import StoreUnavailable
from service.models import Status, Verification, request_digest, rfc3339
from service.store.sqlite.files import DatabaseLock, make_private
from service.store.sqlite.writer import WriterThread

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The verification an idempotency key was first used for, and a digest of that request."""

    verification: Verification
    request_hash: bytes


T = TypeVar("T")
#: A write runs on the writer thread, inside the batch's transaction.
Write = Callable[[sqlite3.Connection], T]
#: What a write came to: its result, or the exception that rolled it back.
Outcome = tuple[bool, Any]


def _move_idempotency_keys(db: sqlite3.Connection) -> None:
    """Keys recorded on verifications before migration 2 move to their own table."""
    rows = db.execute(
        "SELECT idempotency_key, id, phone, reference, created_at FROM verifications"
        " WHERE idempotency_key IS NOT NULL"
    ).fetchall()
    db.executemany(
        "INSERT OR IGNORE INTO idempotency_keys (key, verification_id, request_hash, created_at)"
        " VALUES (?,?,?,?)",
        [(key, vid, request_digest(phone, ref), at) for key, vid, phone, ref, at in rows],
    )
    db.execute("UPDATE verifications SET idempotency_key = NULL")


#: Ordered migrations, SQL scripts or functions; the database records how many it has applied.
MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
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
    """
    -- Tenancy: a verification belongs to the API key (its fingerprint) that started it.
    ALTER TABLE verifications ADD COLUMN owner TEXT NOT NULL DEFAULT '-';
    -- Idempotency keys of every start, the ones that resent a pending verification included;
    -- the request is kept as a digest of its phone and reference, never in the clear.
    CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        verification_id TEXT NOT NULL,
        request_hash BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
    -- A record SQS refused is tried again later, with back-off, instead of blocking the others.
    ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN last_error TEXT;
    CREATE INDEX outbox_due ON outbox (next_attempt_at, seq) WHERE sent_at IS NULL;
    """,
    _move_idempotency_keys,
    """
    -- Outcomes of verifications already masked lose the number too: the outbox keeps it no
    -- longer than the verification does (retention masks both from now on).
    UPDATE outbox SET body = json_set(body, '$.to',
        (SELECT phone FROM verifications WHERE id = outbox.verification_id))
    WHERE json_valid(body)
      AND verification_id IN (SELECT id FROM verifications WHERE phone_redacted = 1);
    """,
)

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
    " completed_at, sms_sent_at, sms_id, reason, owner"
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

#: How many queued writes one transaction takes at most.
MAX_BATCH = 512


@dataclass(frozen=True, slots=True)
class Purged:
    """What one chunk of retention did."""

    #: Rows deleted, masked or dropped: the sweep comes back while this is not 0.
    touched: int
    #: Outcomes dropped undelivered, for being older than finished verifications are kept.
    dropped: int


class Store:
    """Durable state. Open with `await Store.open(path)`; close with `await store.close()`."""

    def __init__(
        self, writer: sqlite3.Connection, thread: WriterThread, reader: aiosqlite.Connection
    ) -> None:
        self._writer = writer
        self._thread = thread
        self._reader = reader
        #: Held from open to close: no second process serves this database meanwhile.
        self._lock: DatabaseLock | None = None
        self._queue: asyncio.Queue[tuple[Write[Any], asyncio.Future[Any]]] = asyncio.Queue()
        self._closed = False
        self._failing_since: float | None = None
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")
        #: Called after an outcome is committed to the outbox (the publisher's wake-up).
        self.on_outcome: Callable[[], None] = lambda: None
        #: Unsent outcomes, so /metrics needs no count over them: counted by the very first
        #: write, queued here before anyone else's, then changed by each write that changes it.
        self._unsent = 0
        counted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        counted.add_done_callback(self._counted)
        self._queue.put_nowait((_count_unsent, counted))

    @classmethod
    async def open(
        cls, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
    ) -> Store:
        # Before SQLite opens the file: a second instance touches nothing, and SQLite makes the
        # -wal and -shm files with the mode of a database file that is already private.
        lock = DatabaseLock.acquire(path)
        try:
            make_private(path)
            store = await cls._connect(path, synchronous, busy_timeout_ms)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    async def _connect(cls, path: str, synchronous: str, busy_timeout_ms: int) -> Store:
        # One thread owns the writing connection for its whole life: sqlite3 objects stay on it.
        thread = WriterThread("store-writer")
        try:
            writer = await thread.call(_open_writer, path, synchronous, busy_timeout_ms)
        except BaseException:
            thread.stop()
            raise
        try:
            reader = await aiosqlite.connect(path, isolation_level=None)
            # As for the writer: wait for a lock rather than fail (a checkpoint may hold one).
            await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except BaseException:
            await thread.call(writer.close)
            thread.stop()
            raise
        return cls(writer, thread, reader)

    async def close(self) -> None:
        """Commit what is queued, then close both connections; later writes are refused."""
        self._closed = True
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._reader.close()
        await self._thread.call(self._writer.close)
        self._thread.stop()
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
                f"INSERT INTO verifications ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _row(v),
            )
            return None

        return await self._write(write)

    async def remember_key(
        self, key: str, verification_id: str, digest: bytes, at: float
    ) -> KeyHolder | None:
        """Record that `key` was answered with an existing verification (a resend).

        If the key is already taken, its holder is returned and nothing is written.
        """
        return await self._write(lambda db: _claim_key(db, key, verification_id, digest, at))

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

    async def pending(self) -> list[Verification]:
        rows = await self._read(f"SELECT {COLUMNS} FROM verifications WHERE status = 'pending'")
        return [_verification(r) for r in rows]

    async def sms_sent(self, v: Verification) -> bool:
        """Checkpoint the SMS; False if the verification is no longer pending."""
        return await self._update(
            "UPDATE verifications SET sms_sent_at = ?, sms_id = ?"
            " WHERE id = ? AND status = 'pending'",
            (v.sms_sent_at, v.sms_id, v.id),
        )

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

    async def finish(self, finished: Sequence[Verification]) -> set[str]:
        """Write final states and their outbox records in one transaction.

        Only verifications still pending on disk change; the ids of those that did are returned,
        and only they get an outcome: a verification is decided once, whatever retries happen.
        """

        def write(db: sqlite3.Connection) -> set[str]:
            applied = set()
            now = time.time()
            for v in finished:
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
                    (v.id, v.status.value, _outcome(v), now),
                )
            return applied

        applied = await self._write(write)
        if applied:
            self._unsent += len(applied)  # one outbox record each
            self.on_outcome()
        return applied

    # -- the outbox (service.push.sqs.Outbox) -----------------------------------------------------

    async def due(self, limit: int, now: float) -> list[OutboxRecord]:
        """Unsent records due by `now`: those tried again after a refusal first, then the others,
        oldest first. Both halves walk the index `outbox_due` from a start, so a read costs
        `limit` rows however many records wait deferred or due.
        """
        rows = await self._read(DUE, (now, limit, limit))
        return [OutboxRecord(*row) for row in rows[:limit]]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        now = time.time()

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

    def _counted(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._unsent += future.result()

    # -- retention ------------------------------------------------------------------------------

    async def purge(
        self, *, finished_before: float, redact_before: float, sent_before: float
    ) -> Purged:
        """One chunk of retention: mask old phone numbers (in the outbox too), delete delivered
        outcomes, drop undelivered ones older than `finished_before`, then delete finished
        verifications without an outcome left, and old idempotency keys.
        """

        def write(db: sqlite3.Connection) -> Purged:
            masked = db.execute(REDACT_PHONES, (redact_before,)).fetchall()
            db.executemany(REDACT_OUTCOMES, [(phone, vid) for vid, phone in masked])
            dropped = db.execute(DROP_UNDELIVERED, (finished_before,)).rowcount
            touched = len(masked) + dropped
            for sql, params in (
                (PURGE_SENT_OUTCOMES, (sent_before,)),
                (PURGE_FINISHED, (finished_before,)),
                (PURGE_IDEMPOTENCY_KEYS, (finished_before,)),
            ):
                touched += max(db.execute(sql, params).rowcount, 0)
            return Purged(touched, dropped)

        purged = await self._write(write)
        self._unsent -= purged.dropped
        return purged

    # -- the writer -------------------------------------------------------------------------------

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

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.DatabaseError as exc:
            raise _unavailable(exc) from exc

    async def _select_one(self, where: str, value: Any) -> Verification | None:
        rows = await self._read(f"SELECT {COLUMNS} FROM verifications WHERE {where}", (value,))
        return _verification(rows[0]) if rows else None

    async def _write(self, write: Write[T]) -> T:
        if self._closed:
            raise StoreUnavailable("The database is closed: the service is stopping.")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((write, future))
        try:
            # Shielded: a caller that gives up must not stop the write, which may be committed.
            result = await asyncio.shield(future)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                raise  # a bug, not the database's state: no retry would help
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            raise _unavailable(exc) from exc
        self._failing_since = None
        return result

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._thread.call(
                    _commit_batch, self._writer, [write for write, _ in batch]
                )
                _settle(batch, outcomes)
            except BaseException:
                # Cancelled or the thread is gone: nobody may wait forever for an answer.
                for _, future in batch:
                    future.cancel()
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()


def _settle(batch: list[tuple[Write[Any], asyncio.Future[Any]]], outcomes: list[Outcome]) -> None:
    for (_, future), (ok, result) in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(result)
        else:
            log.error("write failed and was rolled back", exc_info=result)
            future.set_exception(result)


# -- on the writer thread -------------------------------------------------------------------------


def _commit_batch(db: sqlite3.Connection, writes: list[Write[Any]]) -> list[Outcome]:
    """Commit the writes in one transaction; if that fails, each in its own."""
    try:
        return [(True, result) for result in _transaction(db, writes)]
    except Exception:
        # One bad write must not sink the others that shared its transaction.
        return [_commit_alone(db, write) for write in writes]


def _commit_alone(db: sqlite3.Connection, write: Write[Any]) -> Outcome:
    try:
        return True, _transaction(db, [write])[0]
    except Exception as exc:
        return False, exc


def _transaction(db: sqlite3.Connection, writes: list[Write[Any]]) -> list[Any]:
    # IMMEDIATE takes the write lock up front, so the transaction never fails half-way on it.
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [write(db) for write in writes]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def _count_unsent(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])


def _open_writer(path: str, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun explicitly, as IMMEDIATE, by the writer.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # WAL: readers never block the writer, and a commit is one append to the log.
    db.execute("PRAGMA journal_mode = WAL")
    # FULL syncs the log on every commit, so an acknowledged transition survives power loss too.
    db.execute(f"PRAGMA synchronous = {synchronous}")
    # Another process holding the lock (a backup, a person with the sqlite3 shell) is waited for
    # this long; past it the write fails, and the caller is told 503, with nothing changed.
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    db.execute("PRAGMA foreign_keys = ON")
    _migrate(db)
    return db


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = db.execute("SELECT version FROM schema_version").fetchall()
    version = rows[0][0] if rows else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):

        def migrate(db: sqlite3.Connection, script: Any = script, number: int = number) -> None:
            if callable(script):
                script(db)
            else:
                for statement in _statements(script):
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

        _transaction(db, [migrate])
        log.info("database migrated to version %d", number)


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


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


def _unavailable(exc: sqlite3.DatabaseError) -> StoreUnavailable:
    # The message names the cause (locked, full, I/O) without any of the data.
    return StoreUnavailable(f"The database is unavailable ({exc}); try again shortly.")


def _row(v: Verification) -> tuple[Any, ...]:
    # Spelled out: dataclasses.astuple deep-copies, and this runs for every start.
    return (
        v.id, v.phone, v.reference, v.status.value, v.salt, v.attempts_left, v.attempts,
        v.created_at, v.expires_at, v.completed_at, v.sms_sent_at, v.sms_id, v.reason, v.owner,
    )  # fmt: skip


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
