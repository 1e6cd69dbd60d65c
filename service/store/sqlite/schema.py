"""The SQLite schema: the writing connection's pragmas, and migrations as an ordered list.

The database records how many migrations it has applied (`schema_version`); at open, the writer
applies the rest in order, each in its own transaction with the version it reaches.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from service.models import request_digest
from service.store.sqlite.writer import transaction

log = logging.getLogger(__name__)


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
    """
    -- What a Twilio Verify Service sets for each verification it starts, kept with it: a
    -- change of its code length applies to new ones, never to a code already sent.
    ALTER TABLE verifications ADD COLUMN service TEXT NOT NULL DEFAULT '';
    ALTER TABLE verifications ADD COLUMN code_length INTEGER NOT NULL DEFAULT 0;
    -- When the code was sent again, as comma-separated Unix seconds (Twilio lists each send).
    ALTER TABLE verifications ADD COLUMN resends TEXT NOT NULL DEFAULT '';
    -- A number's latest finished verification: out of attempts, a check of the number is told
    -- so (60202) until its deadline, unless a newer one of the number has ended since.
    CREATE INDEX verifications_finished_number ON verifications (owner, phone, created_at)
        WHERE status != 'pending';
    """,
    """
    -- Webhooks: the endpoints configured, and whether one was disabled (it answered 410 Gone).
    CREATE TABLE webhook_endpoints (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        disabled_at REAL,
        disabled_reason TEXT
    );
    -- One delivery per outcome and endpoint, written with the final state, like the outbox;
    -- no foreign key: the body is all a delivery needs, whatever retention does meanwhile.
    CREATE TABLE webhook_deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        verification_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        -- NULL while it waits; then 'delivered', 'dropped' (its horizon passed) or 'disabled'.
        result TEXT,
        finished_at REAL,
        UNIQUE (verification_id, endpoint)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, next_attempt_at, seq)
        WHERE finished_at IS NULL;
    CREATE INDEX webhook_deliveries_oldest ON webhook_deliveries (endpoint, seq)
        WHERE finished_at IS NULL;
    CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
        WHERE finished_at IS NOT NULL;
    """,
    """
    -- Recovery arms pending verifications page by page, soonest deadline first, while requests
    -- are answered; a request for a number not armed yet finds its pending one by the number.
    DROP INDEX verifications_pending;
    CREATE INDEX verifications_pending ON verifications (expires_at, id) WHERE status = 'pending';
    CREATE INDEX verifications_pending_number ON verifications (owner, phone)
        WHERE status = 'pending';
    """,
)


def open_writer(path: str, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """The writing connection, its pragmas set and the schema migrated; on the writer thread."""
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
    migrate(db)
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations `db` has not had yet, in order."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = db.execute("SELECT version FROM schema_version").fetchall()
    version = rows[0][0] if rows else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):

        def apply(db: sqlite3.Connection, script: Any = script, number: int = number) -> None:
            if callable(script):
                script(db)
            else:
                for statement in _statements(script):
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

        transaction(db, [apply])
        log.info("database migrated to version %d", number)


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
