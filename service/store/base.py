"""The store's interface: what the domain asks of durable state, and nothing else.

The orchestrator, recovery, retention, the metrics, the health check and the publisher see these
protocols, never SQL. Each database implements them in a package of its own (`sqlite/`), and
`service.store.open_store` picks one by `database.url`, as dbos's `SystemDatabase.create()` picks
its system database. Every transition is conditional on the row being as its caller last saw it
(pending, mostly) and reports whether it applied, so a verification is decided exactly once,
however many retries, tasks or replicas try.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.models import Verification

#: Unix seconds now; the store reads the time only through the one it is given.


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The verification an idempotency key was first used for, and a digest of that request."""

    verification: Verification
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class Decided:
    """A final state to commit, and the outcome event that goes into the outbox with it."""

    verification: Verification
    #: The event's body, computed above the store (`service.outcomes.outcome_of`).
    outcome: str
    #: Owner-only (the deadline's or the SMS's decision, not a caller's): where replicas share
    #: the database, it applies only while this replica holds the verification's lease.
    fenced: bool = False
    #: The attempts of the state it was decided from, if known: where replicas share the
    #: database, it applies only if the row still has them (none was spent elsewhere meanwhile).
    attempts_before: int | None = None


@dataclass(frozen=True, slots=True)
class Purged:
    """What one chunk of retention did."""

    #: Rows deleted, masked or dropped: the sweep comes back while this is not 0.
    touched: int
    #: Outcomes dropped undelivered, for being older than finished verifications are kept.
    dropped: int


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outcome waiting in the outbox; `body` is the message body, ready to send."""

    seq: int
    verification_id: str
    status: str
    body: str
    #: Times the queue refused it so far; the publisher's back-off grows with it.
    attempts: int = 0


class Outbox(Protocol):
    """The outbox of outcomes, as the publisher drains it; a store implements it."""

    async def due(self, limit: int, now: float) -> list[OutboxRecord]:
        """At most `limit` unsent records whose next attempt is at or before `now`, oldest first.

        Records deferred to later are not read, so a read costs the same however many there are.
        """
        ...

    async def mark_sent(self, seqs: Sequence[int]) -> None: ...

    async def defer(self, seq: int, until: float, error: str) -> None:
        """Record a refusal: one attempt more, its error, and no new attempt before `until`."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest unsent record is due (epoch seconds); None when all are sent."""
        ...


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` events per `seconds` for `key`, among the windows called `name`."""

    name: str
    key: str
    limit: int
    seconds: float


class Tally(Protocol):
    """The limits' sliding windows of events, where every replica counts in the same ones."""

    async def count(self, windows: Sequence[Window], now: float) -> tuple[int, float] | None:
        """Count one event at `now` in each window, if every one of them has room; else count
        nothing, and return the index of a full one and the seconds until it has room.
        """
        ...

    async def uncount(self, windows: Sequence[Window], at: float) -> None:
        """Take back the event `count` counted at `at`: what it was for did not happen."""
        ...


class Lease(Protocol):
    """A replica's hold on its owner-only work, where several replicas share one database.

    Owner-only is what only one replica may do for a verification: send its SMS, race its
    deadline, publish its outcome. Codes and cancels are decided by whichever replica is asked.
    """

    @property
    def seconds(self) -> float:
        """How long the lease lasts unrenewed: the most a dead replica's work waits."""
        ...

    @property
    def check_seconds(self) -> float:
        """How often it is renewed, and orphaned work looked for."""
        ...

    @property
    def trusted(self) -> bool:
        """Whether work the database cannot fence (an SMS) may start: the lease surely holds."""
        ...

    async def join(self) -> None:
        """Hold the lease again, after losing it: whatever was held before is fenced out."""
        ...

    async def renew(self) -> bool:
        """Extend the lease; False if it had lapsed: then the work held may be another's."""
        ...

    async def adopt(self, limit: int) -> list[Verification]:
        """Take over, at most `limit` at a time, the pending verifications (and the outcomes)
        of replicas whose lease lapsed or that left: held here from now on, to be resumed.
        """
        ...

    async def holds(self, verification_id: str) -> bool:
        """Whether this replica holds the verification, under a valid lease."""
        ...

    async def decided_elsewhere(self) -> list[str]:
        """Verifications held here that another replica decided since the last call."""
        ...

    async def leave(self) -> None:
        """End the lease now, so that the others adopt its work without waiting for it."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """An outcome waiting for one webhook endpoint; `body` is the outcome event, as on SQS."""

    seq: int
    verification_id: str
    body: str
    #: When the outcome was committed: the payload's timestamp, and the horizon's start.
    created_at: float
    #: Failed attempts so far; the back-off grows with it.
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class WebhookBacklog:
    """One endpoint's state, for /metrics: read at each scrape, on an index, never a scan."""

    undelivered: int
    #: The creation time of the oldest undelivered outcome; None when there is none.
    oldest: float | None
    disabled: bool


class WebhookOutbox(Protocol):
    """One delivery per outcome and webhook endpoint, written by `Store.finish` beside the
    SQS outbox record, in the same transaction; each endpoint's deliverer drains its own.
    """

    async def webhooks_due(self, endpoint: str, limit: int, now: float) -> list[WebhookDelivery]:
        """At most `limit` of the endpoint's undelivered outcomes due by `now`, oldest first."""
        ...

    async def webhook_delivered(self, seq: int) -> None: ...

    async def webhook_failed(self, seq: int, until: float, error: str) -> None:
        """One failed attempt more, its error, and no new attempt before `until`."""
        ...

    async def webhook_dropped(self, seq: int, error: str) -> None:
        """Give an outcome up for this endpoint (its horizon passed): never tried again."""
        ...

    async def webhook_next_due(self, endpoint: str) -> float | None:
        """When the endpoint's earliest undelivered outcome is due; None when none is left."""
        ...

    async def disable_webhook(self, endpoint: str, reason: str) -> int:
        """Disable the endpoint (it answered 410 Gone): its undelivered outcomes are dropped,
        and none is written for it any more, until its URL changes. The outcomes dropped.
        """
        ...

    async def webhook_backlog(self, endpoint: str) -> WebhookBacklog: ...


class Store(Outbox, WebhookOutbox, Protocol):
    """Durable state: verifications, their transitions, idempotency keys, and the outbox."""

    #: Called after outcomes are committed to the outbox (the publisher's wake-up).
    on_outcome: Callable[[], None]

    @property
    def lease(self) -> Lease | None:
        """None where this process has the database to itself (SQLite): all of it is its own."""
        ...

    @property
    def tally(self) -> Tally | None:
        """The limits' windows where replicas share the database; None: this process counts
        them itself, in memory.
        """
        ...

    async def close(self) -> None:
        """Commit what is queued, then let go of the database; later writes are refused."""
        ...

    # -- verifications ----------------------------------------------------------------------------

    async def insert(
        self, v: Verification, key: str | None = None, digest: bytes = b""
    ) -> KeyHolder | Verification | None:
        """Record a new verification and its idempotency key, if any, in one transaction.

        If the key is already taken, nothing is written and its holder is returned instead.
        Where replicas share the database, a verification already pending for the same owner
        and phone is returned instead, nothing written: it is one per number, across replicas.
        """
        ...

    async def get(self, verification_id: str) -> Verification | None: ...

    async def by_idempotency_key(self, key: str) -> KeyHolder | None:
        """The holder of `key`; None if it is unused, or its verification is gone."""
        ...

    async def pending(
        self, after: tuple[float, str] | None = None, limit: int | None = None
    ) -> list[Verification]:
        """The pending verifications this process holds, for recovery, soonest deadline first:
        at most `limit` of them, from the first after (`expires_at`, `id`) `after`.

        Read page by page, a million are armed in deadline order while requests are answered.
        """
        ...

    async def pending_for(self, owner: str, phone: str) -> Verification | None:
        """The verification pending for `owner` and `phone`, if any, whichever process holds it."""
        ...

    async def spent_for(self, owner: str, phone: str, now: float) -> Verification | None:
        """The latest finished verification of `owner` and `phone`, if it ran out of attempts
        and its deadline is still to come at `now`: Twilio's clients are told of it until then.
        """
        ...

    async def sms_sent(self, v: Verification) -> bool:
        """Checkpoint the SMS; False if the verification is no longer pending."""
        ...

    async def resent(
        self, verification_id: str, at: float, key: str | None = None, digest: bytes = b""
    ) -> KeyHolder | bool:
        """Record, in one transaction, that the code is sent again at `at` and that `key`, if
        any, was answered with this verification.

        If the key is already taken, its holder is returned; if the verification is no longer
        pending, False: in both cases nothing is written.
        """
        ...

    async def attempted(self, before: Verification, after: Verification) -> bool:
        """Checkpoint a wrong code; False, with nothing written, unless the row is still pending
        with the attempts of `before`: a change made meanwhile is never overwritten.
        """
        ...

    async def shorten(self, verifications: Sequence[Verification]) -> None:
        """Bring pending deadlines forward (never back) to those of `verifications`."""
        ...

    async def finish(self, decided: Sequence[Decided]) -> set[str]:
        """Commit final states and their outcomes; the ids of those that applied.

        Only verifications still pending change, and only they get an outcome: a verification
        is decided once, whatever retries happen.
        """
        ...

    async def agree(self, name: str, value: str) -> str:
        """The value of `name` that every process on this database uses: the first one's.

        Alone on its database, a process agrees with itself: `value` is returned.
        """
        ...

    # -- the outbox's gauges, retention, health ---------------------------------------------------

    async def outbox_depth(self) -> tuple[int, float | None]:
        """Unsent outcomes and the creation time of the oldest of them, without scanning them."""
        ...

    async def purge(
        self, *, finished_before: float, redact_before: float, sent_before: float
    ) -> Purged:
        """One chunk of retention: mask old phone numbers (in the outbox too), delete delivered
        outcomes, drop undelivered ones older than `finished_before`, then delete finished
        verifications without an outcome left, and old idempotency keys.
        """
        ...

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next one that succeeds."""
        ...

    async def probe(self) -> bool:
        """Try a write that changes nothing; True if the database takes writes."""
        ...
