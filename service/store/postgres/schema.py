"""The PostgreSQL schema: migrations as an ordered list, and the one safe way to apply them.

The tables and columns are SQLite's (`service.store.sqlite.schema`), in PostgreSQL's types: times
are `double precision` Unix seconds like SQLite's REAL, digests and salts `bytea`. Several
replicas may start at once: each migration runs in a transaction that first takes one advisory
lock, then reads the version again, so exactly one of them applies it and the others see it done.
"""

from __future__ import annotations

import logging

import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

#: Any constant, the same in every replica: the key of the advisory lock migrations hold.
MIGRATION_LOCK = 0x7665726966790001

#: Ordered migrations; the database records how many it has applied (`schema_version`).
#: PostgreSQL starts at SQLite's present shape: there was never an older one to migrate from.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE verifications (
        id text PRIMARY KEY,
        phone text NOT NULL,
        reference text,
        status text NOT NULL,
        salt bytea NOT NULL,
        attempts_left integer NOT NULL,
        attempts integer NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        completed_at double precision,
        sms_sent_at double precision,
        sms_id text,
        reason text,
        -- The fingerprint of the API key that started it; '-' when authentication is off.
        owner text NOT NULL DEFAULT '-',
        phone_redacted boolean NOT NULL DEFAULT false
    );
    -- Recovery reads only pending rows; a partial index keeps that cheap with millions finished.
    CREATE INDEX verifications_pending ON verifications (id) WHERE status = 'pending';
    -- Retention walks finished rows by age; the second index forgets rows once masked.
    CREATE INDEX verifications_finished ON verifications (completed_at) WHERE status <> 'pending';
    CREATE INDEX verifications_unredacted ON verifications (completed_at)
        WHERE status <> 'pending' AND NOT phone_redacted;

    -- Idempotency keys of every start, the ones that resent a pending verification included;
    -- the request is kept as a digest of its phone and reference, never in the clear.
    CREATE TABLE idempotency_keys (
        key text PRIMARY KEY,
        verification_id text NOT NULL,
        request_hash bytea NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

    CREATE TABLE outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        -- UNIQUE: a verification has exactly one outcome, whatever retries happen above.
        verification_id text NOT NULL UNIQUE REFERENCES verifications (id),
        status text NOT NULL,
        body text NOT NULL,
        created_at double precision NOT NULL,
        sent_at double precision,
        -- A record the queue refused is tried again later, with back-off, not blocking others.
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL DEFAULT 0,
        last_error text
    );
    CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
    CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
    CREATE INDEX outbox_due ON outbox (next_attempt_at, seq) WHERE sent_at IS NULL;
    """,
    # Replicas: each holds the owner-only work (the SMS, the deadline, publishing) of what it
    # started or adopted, under a lease renewed in `replicas`; see `service.store.postgres.lease`.
    """
    CREATE SEQUENCE replica_epochs;
    CREATE TABLE replicas (
        name text PRIMARY KEY,
        -- Bumped by every start of the name: the fence of its previous life's writes.
        epoch bigint NOT NULL,
        -- Unix seconds by the database's clock; 0 once the replica has handed its work over.
        lease_until double precision NOT NULL,
        started_at double precision NOT NULL
    );
    -- The replica holding a pending verification's owner-only work; NULL: anyone may adopt it.
    ALTER TABLE verifications ADD COLUMN holder text;
    CREATE INDEX verifications_held ON verifications (holder) WHERE status = 'pending';
    -- One pending verification per caller and number, whichever replica is asked to start it.
    CREATE UNIQUE INDEX verifications_one_pending ON verifications (owner, phone)
        WHERE status = 'pending';
    -- The replica that publishes an outcome: the one that decided it, or its adopter. The
    -- index serves both halves of a replica's read of what is due (see `store.DUE`).
    ALTER TABLE outbox ADD COLUMN holder text;
    CREATE INDEX outbox_held ON outbox (holder, next_attempt_at, seq) WHERE sent_at IS NULL;
    """,
    # The limits' windows, shared by the replicas (`service.store.postgres.tally`): each window
    # counted in tenths of its length, so a check sums ten rows whatever the limit.
    """
    CREATE TABLE limit_counts (
        bucket text NOT NULL,
        slot bigint NOT NULL,
        n integer NOT NULL,
        -- When the slot leaves its window: rows of numbers not seen again are swept by then.
        until double precision NOT NULL,
        PRIMARY KEY (bucket, slot)
    );
    CREATE INDEX limit_counts_until ON limit_counts (until);

    -- One event at `now` in every window if each has room, else none; (0, 0) when counted, or
    -- (i, seconds until window i has room). Buckets are locked in a fixed order, so replicas
    -- counting in the same windows at once take turns, never both over the limit.
    CREATE FUNCTION limits_count(
        buckets text[], limits integer[], seconds double precision[], now double precision
    ) RETURNS TABLE (refused integer, wait double precision) LANGUAGE plpgsql AS $$
    DECLARE
        i integer;
        width double precision;
        first_slot bigint;
        total bigint;
        oldest bigint;
    BEGIN
        FOR i IN SELECT b.i FROM unnest(buckets) WITH ORDINALITY AS b (name, i) ORDER BY b.name
        LOOP
            PERFORM pg_advisory_xact_lock(hashtextextended(buckets[i], 0));
        END LOOP;
        FOR i IN 1 .. cardinality(buckets) LOOP
            width := seconds[i] / 10;
            first_slot := floor((now - seconds[i]) / width)::bigint + 1;
            SELECT coalesce(sum(c.n), 0), min(c.slot) INTO total, oldest
            FROM limit_counts AS c WHERE c.bucket = buckets[i] AND c.slot >= first_slot;
            IF total >= limits[i] THEN
                RETURN QUERY SELECT i, greatest(oldest * width + seconds[i] - now, width / 10);
                RETURN;
            END IF;
        END LOOP;
        FOR i IN 1 .. cardinality(buckets) LOOP
            width := seconds[i] / 10;
            INSERT INTO limit_counts AS c (bucket, slot, n, until)
            VALUES (buckets[i], floor(now / width)::bigint, 1,
                    (floor(now / width) + 1) * width + seconds[i])
            ON CONFLICT (bucket, slot) DO UPDATE SET n = c.n + 1;
        END LOOP;
        RETURN QUERY SELECT 0, 0.0::double precision;
    END $$;
    """,
    # What every replica must use alike, set by the first (the code book's fingerprint).
    """
    CREATE TABLE shared_settings (name text PRIMARY KEY, value text NOT NULL);
    """,
    # Verifications one replica decided while another held them: the holder's tasks for them
    # are let go at its next renewal, instead of waiting for a deadline the row would refuse.
    """
    CREATE TABLE decided_elsewhere (
        holder text NOT NULL,
        verification_id text NOT NULL,
        PRIMARY KEY (holder, verification_id)
    );
    """,
    # What a Twilio Verify Service sets for each verification it starts, kept with it: a change
    # of its code length applies to new ones, never to a code already sent. `resends`: when
    # the code was sent again (Twilio lists each send).
    """
    ALTER TABLE verifications
        ADD COLUMN service text NOT NULL DEFAULT '',
        ADD COLUMN code_length integer NOT NULL DEFAULT 0,
        ADD COLUMN resends double precision[] NOT NULL DEFAULT '{}';
    -- A number's latest finished verification: out of attempts, a check of the number is told
    -- so (60202) until its deadline, unless a newer one of the number has ended since.
    CREATE INDEX verifications_finished_number ON verifications (owner, phone, created_at)
        WHERE status <> 'pending';
    """,
    # Webhooks: SQLite's tables (`sqlite.schema`), each delivery held by one replica, as the
    # outbox's records are: the one that decided it, or its adopter.
    """
    CREATE TABLE webhook_endpoints (
        name text PRIMARY KEY,
        url text NOT NULL,
        disabled_at double precision,
        disabled_reason text
    );
    CREATE TABLE webhook_deliveries (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        verification_id text NOT NULL,
        endpoint text NOT NULL,
        body text NOT NULL,
        created_at double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL DEFAULT 0,
        last_error text,
        result text,
        finished_at double precision,
        holder text,
        UNIQUE (verification_id, endpoint)
    );
    CREATE INDEX webhook_deliveries_held ON webhook_deliveries
        (holder, endpoint, next_attempt_at, seq) WHERE finished_at IS NULL;
    CREATE INDEX webhook_deliveries_oldest ON webhook_deliveries (endpoint, seq)
        WHERE finished_at IS NULL;
    CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
        WHERE finished_at IS NOT NULL;
    """,
    # Recovery reads a replica's pending verifications page by page, soonest deadline first.
    """
    DROP INDEX verifications_held;
    CREATE INDEX verifications_held ON verifications (holder, expires_at, id)
        WHERE status = 'pending';
    """,
)


async def migrate(db: asyncpg.Connection) -> int:
    """Apply the migrations the database has not had yet, in order; the version it is at.

    Safe to run from any number of connections at once, and again: the advisory lock is
    transaction-scoped, so it is released by the commit (or by the server if the connection
    dies) and never outlives the migration, whatever the pool does with the connection after.
    """
    while True:
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            # Under the lock: two replicas creating it at once would collide on the catalog.
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            version = await db.fetchval("SELECT version FROM schema_version") or 0
            if version >= len(MIGRATIONS):
                if version > len(MIGRATIONS):
                    log.warning(
                        "database is at version %d, newer than this replica's %d",
                        version,
                        len(MIGRATIONS),
                    )
                return int(version)
            await db.execute(MIGRATIONS[version])
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version (version) VALUES ($1)", version + 1)
        log.info("database migrated to version %d", version + 1)
