"""The orchestrator: one asyncio task per pending verification, racing the code against a timer.

Each task races two things: its inbox (codes, cancels, resends, delivered like Durable
Functions' external events, and the SMS activity's own reports) and the deadline. Both resolve
one future, the task's waiter, and the first to do so wins: `asyncio.wait(FIRST_COMPLETED)` on an
event and a timer, without the kilobyte and the microseconds that asyncio.wait and a loop timer
cost each of a million waiting (see `deadlines`). What came is decided by `decisions.decide`, a
pure function; the task carries the decision out. A losing deadline is withdrawn; a command
arriving after the deadline won waits in the inbox, and is refused. The SMS goes out from a task of
its own, so neither Twilio's retries nor its silence hold the verification up. Every transition
is committed to the store before anyone is told of it, and commands are handled one at a time,
so attempts can never be over-spent.

When the database fails, nothing is adopted that is not on disk: a command is tried again for a
little while, then answered 503 with nothing changed; a decision the deadline or the SMS made is
tried again, with back-off, until it is committed. Either way the verification stays armed and
answerable, and is decided exactly once.

Where replicas share the database (`Store.lease` is not None), a verification's task runs on the
replica holding it; the others decide a code or a cancel for it directly (`_direct`), with the
same `decide` and the store's conditional writes: the row's status and attempts are the fence,
and a write that finds them changed is decided again on what the row now holds. A task whose
owner-only write is refused by the fence has lost the verification to another replica: it ends
without deciding (`_Lost`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from service.backoff import delays
from service.codes import CodeBook
from service.config import DatabaseSettings, VerificationSettings
from service.errors import (
    Conflict,
    NotFound,
    NotPending,
    RateLimited,
    SmsError,
    StoreUnavailable,
    Unavailable,
    Unprocessable,
)
from service.limits import Limits
from service.models import DEFAULT_POLICY, Clock, Policy, Status, Verification, request_digest
from service.observers import IGNORED, Observer
from service.orchestrator.deadlines import Deadlines
from service.orchestrator.decisions import (
    Answer,
    Approve,
    Cancel,
    Checkpoint,
    Code,
    Command,
    Deadline,
    Decision,
    Finish,
    Resend,
    SendAgain,
    SendFailed,
    Sent,
    Spend,
    decide,
)
from service.orchestrator.run import Run
from service.outcomes import decided
from service.sms.challenge import Challenges
from service.store import KeyHolder, Store
from service.validation import code_refused

log = logging.getLogger(__name__)


#: Waits between tries of a decision the database refused; the last repeats until it holds.
STORE_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
#: Times a command is decided again because another replica changed the row meanwhile; past
#: it (a verification hammered from every replica at once), 503 and the client tries again.
MAX_CONFLICTS = 32
#: A stop cancels the idle tasks one by one up to this many (milliseconds' work); past it, it
#: leaves them for the process to end with.
CANCEL_IDLE_UP_TO = 10_000


class _Gone(Exception):
    """A resend reached a verification that ended meanwhile: the start makes a new one."""


class _Lost(Exception):
    """An owner-only write was fenced out: another replica holds the verification now."""


class _Replayed(Exception):
    """A resend's key turned out to be taken: the request is a replay of that one."""

    def __init__(self, holder: KeyHolder) -> None:
        super().__init__(holder.verification.id)
        self.holder = holder


@dataclass(frozen=True, slots=True)
class Started:
    """What a start came to: the verification, and whether it is new or a replay of a key."""

    verification: Verification
    created: bool
    replayed: bool


@dataclass(slots=True, eq=False)
class _Turn:
    """Starts for one (owner, phone) take turns; `users` counts the one in and those waiting."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Orchestrator:
    """Starts, resumes and steers verifications; knows nothing of HTTP."""

    def __init__(
        self,
        store: Store,
        challenges: Challenges,
        codes: CodeBook,
        limits: Limits,
        settings: VerificationSettings,
        database: DatabaseSettings | None = None,
        clock: Clock = time.time,
        observer: Observer = IGNORED,
        longest_ttl: float | None = None,
    ) -> None:
        """`longest_ttl`: the longest any verification may have left (the settings' TTL by
        default, a longer Service's if any): one found with more, the clock having been set
        back, is shortened to it.
        """
        self._limits = limits
        self._longest_ttl = longest_ttl or settings.ttl_seconds
        self._store = store
        self._challenges = challenges
        self._codes = codes
        self._settings = settings
        self._write_retry_seconds = (database or DatabaseSettings()).write_retry_seconds
        self._clock = clock
        self._observer = observer
        self._deadlines = Deadlines(clock)
        self._runs: dict[str, Run] = {}
        #: The pending verification of each (owner, phone): one at a time for each.
        self._by_phone: dict[tuple[str, str], Run] = {}
        #: Starts in progress, by (owner, phone): concurrent starts for one number queue here.
        self._starting: dict[tuple[str, str], _Turn] = {}
        self._stopping = False
        #: Where replicas share the database: this one's lease on the verifications it holds.
        self._lease = store.lease
        #: Resends sent for verifications another replica holds (`_resend_held_elsewhere`).
        self._side_sends: set[asyncio.Task[None]] = set()
        #: See `take_doubts`.
        self._doubted: set[str] = set()
        self._recovering = False
        #: Set once `close` has done its work: a second call finds nothing to stop.
        self._closed = False
        #: Verifications that ended while recovery ran: a page read before they ended must not
        #: arm them again.
        self._ended_while_recovering: set[str] = set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def recovering(self) -> bool:
        """While recovery arms what is pending, a number's pending one may not be armed yet:
        it is looked for in the store, and armed on demand.
        """
        return self._recovering

    @recovering.setter
    def recovering(self, value: bool) -> None:
        self._recovering = value
        if not value:
            self._ended_while_recovering.clear()

    @property
    def pending_count(self) -> int:
        return len(self._runs)

    # -- commands ---------------------------------------------------------------------------------

    async def start(
        self,
        phone: str,
        reference: str | None,
        *,
        owner: str = "-",
        idempotency_key: str | None = None,
        policy: Policy = DEFAULT_POLICY,
    ) -> Started:
        """Start a verification, or resend the pending one for this phone.

        The row is committed before this returns; the SMS goes out from a task of its own.
        Starts for the same owner and phone are taken one at a time, so a double click makes
        one verification and one code, whatever the interleaving. A start that sends nothing
        (a replay, a refusal, a database failure) is not counted against the limits. `policy`
        sets what a new one is made with; a number pending under another is refused.
        """
        if self._stopping:
            raise Unavailable("The service is stopping; try again shortly.")
        digest = b""
        if idempotency_key is not None:
            digest = request_digest(phone, reference, policy.service)
        async with self._one_start(owner, phone):
            if idempotency_key is not None:
                holder = await self._store.by_idempotency_key(idempotency_key)
                if holder is not None:
                    return Started(self._replayed(holder, digest), created=False, replayed=True)
            admitted = await self._limits.admit(phone, owner)
            try:
                started = await self._start(
                    phone, reference, owner, idempotency_key, digest, policy
                )
            except BaseException:
                await self._limits.refund(phone, owner, admitted)
                raise
            if started.replayed:
                await self._limits.refund(phone, owner, admitted)
            return started

    async def _start(
        self,
        phone: str,
        reference: str | None,
        owner: str,
        key: str | None,
        digest: bytes,
        policy: Policy,
    ) -> Started:
        pending = self._by_phone.get((owner, phone))
        if pending is None and self._recovering:
            pending = await self._unarmed(owner, phone)
        if pending is not None:
            _same_service(pending.verification, policy)
            try:
                return await self._resend(pending, key, digest)
            except _Gone:
                pass  # it ended while the resend waited its turn: this start makes a new one
        for _ in range(MAX_CONFLICTS):
            try:
                return await self._create(phone, reference, owner, key, digest, policy)
            except _Gone:
                pass  # the one pending on another replica ended meanwhile: start anew
        raise _busy()

    async def submit_code(
        self, verification_id: str, code: str, *, owner: str = "-", exact_length: bool = False
    ) -> Verification:
        """Hand a code to the verification's task and wait until it has been decided.

        `exact_length`: a code not of the verification's length is refused, changing nothing;
        else it is a wrong code, as Twilio counts it.
        """
        target = await self._run_of(verification_id, owner)
        v = target.verification if isinstance(target, Run) else target
        length = v.code_length or self._codes.length
        if exact_length and len(code) != length:
            raise code_refused(length)
        # Checked on arrival, like an update's validator: the salt is the verification's for life.
        matches = self._codes.matches(v.salt, code, v.code_length)
        return await self._decide(target, Code(matches, received_at=self._clock()))

    async def cancel(self, verification_id: str, *, owner: str = "-") -> Verification:
        return await self._decide(await self._run_of(verification_id, owner), Cancel())

    async def approve(self, verification_id: str, *, owner: str = "-") -> Verification:
        """Approve without a code, as the caller vouches; published like any approval."""
        target = await self._run_of(verification_id, owner)
        return await self._decide(target, Approve(received_at=self._clock()))

    async def current_for(self, phone: str, *, owner: str = "-") -> Verification | None:
        """The caller's verification of this number: the pending one, else one that ran out of
        attempts before its deadline (until then, what a check of the number is told), else None.
        """
        run = self._by_phone.get((owner, phone))
        if run is None and self._recovering:
            run = await self._unarmed(owner, phone)
        if self._lease is None:  # alone, every pending one is armed here, or found by _unarmed
            pending = run.verification if run is not None else None
        else:
            pending = await self._store.pending_for(owner, phone)
        if pending is not None:
            return pending
        return await self._store.spent_for(owner, phone, self._clock())

    async def _unarmed(self, owner: str, phone: str) -> Run | None:
        """Alone on the database while recovery runs: the number's pending verification not
        armed yet, armed now. Shared, the store keeps one per number by itself.
        """
        if not self._recovering or self._lease is not None:
            return None
        found = await self._store.pending_for(owner, phone)
        if found is None or self._stopping:
            return None
        return self.resume(found)

    async def _decide(
        self, target: Run | Verification, command: Code | Cancel | Approve
    ) -> Verification:
        if isinstance(target, Run):
            return await self._command(target, command)
        return await self._direct(target, command)

    async def expire(self, overdue: Sequence[Verification]) -> None:
        """Finish, in one transaction, verifications whose deadline passed while none was armed.

        Recovery's: each is decided as its deadline would have decided it, and told once.
        """
        now = self._clock()
        decisions = [decide(v, Deadline(), now) for v in overdue]
        finals = [d.final for d in decisions if isinstance(d, Finish)]
        if not finals:
            return
        applied = await self._store.finish(
            [decided(v, fenced=True, before=v.attempts) for v in finals]
        )
        for v in finals:
            if v.id in applied:
                self._observer.finished(v)

    async def get(self, verification_id: str, *, owner: str = "-") -> Verification:
        run = self._runs.get(verification_id)
        # Shared, another replica may have decided it: only the database knows.
        if run is not None and self._lease is None:
            v: Verification | None = run.verification
        else:
            v = await self._store.get(verification_id)
            if v is not None and run is None and self._lease is None and v.pending:
                v = await self._arm(v)  # not reached by recovery yet
        # Another owner's verification is as good as absent: its id alone tells them nothing.
        if v is None or v.owner != owner:
            raise NotFound(f"Verification '{verification_id}' does not exist.")
        return v

    async def _arm(self, v: Verification) -> Verification:
        """Arm, on demand, a pending verification found unarmed; one overdue is expired first,
        as its deadline would have, so it is never shown pending past it.
        """
        now = self._clock()
        if v.expires_at > now + self._longest_ttl:
            v = replace(v, expires_at=now + self._longest_ttl)
            await self._store.shorten([v])
        if v.expires_at > now:
            return v if self._stopping else self.resume(v).verification
        await self.expire([v])
        return await self._store.get(v.id) or v

    def resume(self, v: Verification, *, charged: bool = False) -> Run:
        """Arm a task for a pending verification; arming one twice is harmless.

        `charged` says whether its SMS, if it still has to go out, was counted in the limits.
        """
        run = self._runs.get(v.id)
        if run is None:
            if v.id in self._ended_while_recovering:
                return Run(v)  # read before it ended: it stays ended, unarmed
            run = self._runs[v.id] = Run(v)
            self._by_phone[(v.owner, v.phone)] = run
            run.task = asyncio.create_task(self._orchestrate(run, charged))
        return run

    async def close(self, grace: float) -> None:
        """Stop: idle tasks at once (their state is on disk), busy ones by `grace` seconds.

        An SMS in flight makes its verification busy: cut short, Twilio may have taken it, and
        the restart would send it again. A task goes as soon as it is idle again. A second call,
        while or after the first runs, finds nothing left to stop. Past `CANCEL_IDLE_UP_TO`
        tasks, the idle ones are left as they are, for the process to end with: cancelling a
        million one by one would take seconds, and change nothing on disk.
        """
        if self._closed:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if len(self._runs) > CANCEL_IDLE_UP_TO:
            await self._until_idle(deadline)
            self._closed = True
            return
        while True:
            for run in list(self._runs.values()):
                if _idle(run):
                    run.task.cancel()  # type: ignore[union-attr]
            busy = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
            busy += [task for task in self._side_sends if not task.done()]
            left = deadline - loop.time()
            if not busy or left <= 0:
                break
            # Woken when one ends, and every so often: a busy task may have become idle.
            await asyncio.wait(busy, timeout=min(left, 0.05), return_when=FIRST_COMPLETED)
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        # A task cancelled before its first step never ran the code that reaps it.
        for run in list(self._runs.values()):
            self._reap(run, asyncio.CancelledError())
        self._closed = True

    async def _until_idle(self, deadline: float) -> None:
        """Wait for the busy tasks to be idle (or end), by `deadline`; then cancel the rest."""
        loop = asyncio.get_running_loop()
        # One pass over a million, inlined: the idle are most, and stay as they are.
        busy = {
            r.task: r
            for r in self._runs.values()
            if r.task is not None and (r.waiter is None or r.sending is not None)
        }
        sides = {task for task in self._side_sends if not task.done()}
        while True:
            busy = {task: r for task, r in busy.items() if not task.done() and not _idle(r)}
            sides = {task for task in sides if not task.done()}
            left = deadline - loop.time()
            if not (busy or sides) or left <= 0:
                break
            waiting = [*busy, *sides]
            await asyncio.wait(waiting, timeout=min(left, 0.05), return_when=FIRST_COMPLETED)
        late = [*busy, *sides]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def forget(self, verification_ids: Iterable[str]) -> int:
        """Let go of the tasks of verifications another replica decided; how many went.

        An idle task ends now, writing nothing; a busy one learns it from its next write.
        """
        forgotten = 0
        for verification_id in verification_ids:
            run = self._runs.get(verification_id)
            idle = run is not None and run.waiter is not None and not run.inbox
            if run is not None and idle and run.sending is None and run.task is not None:
                run.task.cancel()
                forgotten += 1
        return forgotten

    def take_doubts(self) -> set[str]:
        """Verifications that may have been left pending and unarmed here since the last call
        (a start whose commit was not confirmed, a task that failed): to be looked at again.
        """
        doubted, self._doubted = self._doubted, set()
        return doubted

    def _doubt(self, verification_id: str) -> None:
        # Alone on the database, the next command re-arms it; nothing comes to take the doubts.
        if self._lease is not None:
            self._doubted.add(verification_id)

    async def abandon(self) -> int:
        """Let go of every verification armed here, writing nothing: the lease was lost.

        Their rows are the database's to hand out now; what is still this replica's is armed
        again by the recovery that follows. Commands waiting are answered 503, to be asked again.
        """
        runs = list(self._runs.values())
        for run in runs:  # told why, before the cancel says "stopping"
            while (letter := run.next_command()) is not None:
                _refuse(letter[1], _handed_over())
        tasks = [r.task for r in runs if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in runs:
            self._reap(run, asyncio.CancelledError())
        return len(runs)

    # -- starting ---------------------------------------------------------------------------------

    async def _create(
        self,
        phone: str,
        reference: str | None,
        owner: str,
        key: str | None,
        digest: bytes,
        policy: Policy,
    ) -> Started:
        now = self._clock()
        settings = self._settings
        v = Verification(
            id="VE" + secrets.token_hex(16),
            phone=phone,
            reference=reference,
            status=Status.PENDING,
            salt=self._codes.new_salt(),
            attempts_left=policy.max_attempts or settings.max_attempts,
            attempts=0,
            created_at=now,
            expires_at=now + (policy.ttl_seconds or settings.ttl_seconds),
            owner=owner,
            service=policy.service,
            code_length=policy.code_length or self._codes.length,
        )
        try:
            holder = await self._store.insert(v, key, digest)
        except StoreUnavailable:
            self._doubt(v.id)  # the commit may have landed all the same, unarmed
            raise
        if isinstance(holder, KeyHolder):  # the same key raced in from another request
            return Started(self._replayed(holder, digest), created=False, replayed=True)
        if holder is not None:  # pending for this number on another replica: send it again
            _same_service(holder, policy)
            return await self._resend_held_elsewhere(holder, key, digest)
        self._observer.started(v)
        return Started(self.resume(v, charged=True).verification, created=True, replayed=False)

    async def _resend(self, run: Run, key: str | None, digest: bytes) -> Started:
        """Have the verification's task claim the key and send the code again.

        The task does both, between its other commands, so neither can happen to a verification
        that has ended: then `_Gone` is raised, and nothing was claimed or sent.
        """
        try:
            v = await self._command(run, Resend(key, digest))
        except _Replayed as replay:
            return Started(self._replayed(replay.holder, digest), created=False, replayed=True)
        return Started(v, created=False, replayed=False)

    async def _resend_held_elsewhere(
        self, v: Verification, key: str | None, digest: bytes
    ) -> Started:
        """Send the code again for a verification another replica holds, from here.

        The holder's task is out of reach, so this replica sends it, without a checkpoint (a
        resend has none): the code is the same, and a verification ended meanwhile is only sent
        one code too many, which ends with it.
        """
        at = self._clock()
        recorded = await self._store.resent(v.id, at, key, digest)
        if isinstance(recorded, KeyHolder):
            return Started(self._replayed(recorded, digest), created=False, replayed=True)
        if not recorded:
            raise _Gone()  # ended meanwhile: the start makes a new one
        v = replace(v, resends=(*v.resends, at))
        task = asyncio.create_task(self._send_once(v))
        self._side_sends.add(task)
        task.add_done_callback(self._side_sends.discard)
        return Started(v, created=False, replayed=False)

    async def _send_once(self, v: Verification) -> None:
        try:
            await self._challenges.send(v, charged=True)
        except SmsError as exc:
            log.warning("resend failed", extra={"verification_id": v.id, "reason": exc.reason})
        except Exception:
            log.exception("sms sender failed", extra={"verification_id": v.id})

    @asynccontextmanager
    async def _one_start(self, owner: str, phone: str) -> AsyncIterator[None]:
        key = (owner, phone)
        turn = self._starting.get(key)
        if turn is None:
            turn = self._starting[key] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            # The last one out takes it away, waiters counted: memory follows starts in progress.
            turn.users -= 1
            if turn.users == 0:
                del self._starting[key]

    # -- the task ---------------------------------------------------------------------------------

    async def _orchestrate(self, run: Run, charged: bool) -> None:
        # One coroutine for the whole life, helpers awaited only between waits: while it waits,
        # this frame and its waiter are all that a verification costs.
        loop = asyncio.get_running_loop()
        failure: BaseException | None = None
        try:
            if run.verification.sms_sent_at is None:
                self._send(run, first=True, charged=charged)
            while run.verification.pending:
                expires_at = run.verification.expires_at
                if not run.inbox and expires_at > self._clock():
                    # The race: a letter in the inbox and the deadline both resolve the waiter;
                    # the first wins, and the deadline is withdrawn if it lost.
                    waiter = run.waiter = loop.create_future()
                    tick = self._deadlines.wake(expires_at, waiter)
                    try:
                        await waiter
                    finally:
                        self._deadlines.withdraw(tick, waiter)
                        run.waiter = None
                letter = run.next_command()
                if letter is None:  # the deadline won the race
                    await self._settle(run, Deadline())
                else:
                    await self._step(run, *letter)
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except _Lost:
            # Another replica holds it now (this one's lease lapsed): its task runs there.
            failure = Unavailable("The verification was handed over; ask again.")
            log.info("verification handed over", extra={"verification_id": run.verification.id})
        except Exception as exc:
            # A bug. The row is still pending on disk, and the next command for it re-arms it
            # (alone on the database) or the next round of the lease (replicas: `take_doubts`).
            failure = exc
            self._doubt(run.verification.id)
            log.exception(
                "verification task failed", extra={"verification_id": run.verification.id}
            )
        finally:
            self._reap(run, failure)

    async def _step(
        self, run: Run, command: Command, reply: asyncio.Future[Verification] | None
    ) -> None:
        """Decide one command and carry it out.

        While the store fails, it is tried again for a while, then answered 503 with nothing done.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._write_retry_seconds
        conflicts = 0
        for delay in delays(STORE_RETRY_DELAYS):
            try:
                if self._lease is not None and isinstance(command, Resend):
                    # Another replica may have decided it: a resend must see the row.
                    await self._reload(run)
                decision = decide(run.verification, command, self._clock())
                if reply is None:
                    assert isinstance(command, Sent | SendFailed)
                    await self._settle(run, command)
                    return
                outcome = await self._apply(run, decision)
                if outcome is None:  # the row changed meanwhile: decide again on what it holds
                    conflicts += 1
                    if conflicts < MAX_CONFLICTS:
                        continue
                    raise _busy()
            except StoreUnavailable as exc:
                if loop.time() + delay > give_up_at:
                    _refuse(reply, exc)
                    return
                await asyncio.sleep(delay)
                continue
            except asyncio.CancelledError:
                _refuse(reply, asyncio.CancelledError())
                raise
            except (_Lost, Unavailable) as exc:
                _refuse(reply, exc if isinstance(exc, Unavailable) else _handed_over())
                if isinstance(exc, _Lost):
                    raise
                return
            except Exception as exc:
                # A bug must not take the verification with it: this command fails, it lives on.
                log.exception("command failed", extra={"verification_id": run.verification.id})
                _refuse(reply, Unavailable(f"The command could not be handled: {exc!r}."))
                return
            _answer(reply, run.verification, command, outcome)
            return

    async def _apply(self, run: Run, decision: Decision) -> Answer | KeyHolder | None:
        """Carry out `decision`: what its caller is answered, or the holder of a resend's key;
        None if the row had changed meanwhile (then it is reloaded, to be decided again).
        """
        v = run.verification
        match decision:
            case Finish(final, answer):
                if await self._finish(run, final):
                    return answer
                # The row changed under us: this command decided nothing.
                return None if run.verification.pending else Answer.NOT_PENDING
            case Spend(spent):
                if not await self._store.attempted(v, spent):
                    await self._reload(run)
                    return None
                run.verification = spent
            case SendAgain(key, digest):
                # Recorded before it goes, with its key: Twilio's clients are shown every send.
                at = self._clock()
                recorded = await self._store.resent(v.id, at, key, digest)
                if isinstance(recorded, KeyHolder):
                    return recorded  # a replay: nothing is sent
                if not recorded:
                    await self._reload(run)
                    return None
                run.verification = replace(v, resends=(*v.resends, at))
                self._send(run, first=False, charged=True)
            case Checkpoint(sent):
                await self._checkpoint_sms(run, sent)
        return decision.answer

    # -- the SMS activity -------------------------------------------------------------------------

    def _send(self, run: Run, *, first: bool, charged: bool) -> None:
        # A resend asked for while a send is in flight goes out after it, not beside it.
        after = run.sending
        run.sending = asyncio.create_task(
            self._send_challenge(run, first=first, charged=charged, after=after)
        )

    async def _send_challenge(
        self, run: Run, *, first: bool, charged: bool, after: asyncio.Task[None] | None
    ) -> None:
        """Send the code and report to the verification's task: only a first send can fail it."""
        v = run.verification
        try:
            if after is not None:
                await after  # cancelling this send cancels the one it waits for too
            ready = self._until_trusted if self._lease is not None else None
            sms_id = await self._challenges.send(v, charged=charged, ready=ready)
        except SmsError as exc:
            log.warning(
                "sms failed", extra={"verification_id": v.id, "reason": exc.reason, "first": first}
            )
            # Out of time, the deadline decides: the verification expired, whatever the SMS did.
            if first and self._clock() < v.expires_at:
                run.deliver(SendFailed(exc.reason))
            return
        except Exception as exc:
            # An unexpected error of the sender is a failure of this send, not of the task.
            log.exception("sms sender failed", extra={"verification_id": v.id})
            if first:
                run.deliver(SendFailed(f"sms sender error: {exc!r}"[:200]))
            return
        finally:
            if run.sending is asyncio.current_task():
                run.sending = None
        run.deliver(Sent(sms_id))

    async def _until_trusted(self) -> None:
        """Return once the lease surely holds: an SMS cannot be taken back once it is sent."""
        assert self._lease is not None
        # Polled, not awaited: trust is lost by time passing, not by an event.
        while True:
            if self._lease.trusted:
                return
            await asyncio.sleep(self._lease.check_seconds)

    async def _checkpoint_sms(self, run: Run, sent: Verification) -> None:
        try:
            applied = await self._store.sms_sent(sent)
        except StoreUnavailable:
            # Not on disk: after a crash the same code is sent again, which is all it costs.
            log.warning("could not record the SMS", extra={"verification_id": sent.id})
            return
        if applied:
            run.verification = sent
            return
        await self._reload(run)
        if run.verification.pending:
            raise _Lost()

    # -- decisions --------------------------------------------------------------------------------

    async def _settle(self, run: Run, command: Deadline | Sent | SendFailed) -> None:
        """Carry out what the deadline or the SMS decides; a final status, until it holds.

        No one is waiting to be answered 503, so a final status is tried again until the database
        takes it. Meanwhile, the commands that arrive are answered 503: they cannot be decided
        either. A row that refused it while still pending was changed on another replica (an
        attempt spent: decided again) or is no longer held here (`_Lost`).
        """
        conflicts = 0
        for delay in delays(STORE_RETRY_DELAYS):
            decision = decide(run.verification, command, self._clock())
            if not isinstance(decision, Finish):
                await self._apply(run, decision)
                return
            try:
                applied = await self._finish(run, decision.final, fenced=True)
                if applied or not run.verification.pending:
                    return
                conflicts += 1
                if conflicts >= MAX_CONFLICTS or self._lease is None:
                    raise _Lost()
                if not await self._lease.holds(run.verification.id):
                    raise _Lost()
                continue  # still ours, with an attempt spent elsewhere: decide on the row
            except StoreUnavailable as exc:
                log.warning(
                    "could not record %s; trying again in %gs",
                    decision.final.status.value,
                    delay,
                    extra={"verification_id": run.verification.id},
                )
                while (letter := run.next_command()) is not None:
                    _refuse(letter[1], exc)
                await asyncio.sleep(delay)

    async def _finish(self, run: Run, final: Verification, *, fenced: bool = False) -> bool:
        """Commit a final status; False if the row was no longer pending, or, `fenced`, no longer
        held here (then it is reloaded).
        """
        # The new state is only adopted once committed: memory never runs ahead of the disk.
        before = run.verification.attempts
        if final.id not in await self._store.finish([decided(final, fenced=fenced, before=before)]):
            await self._reload(run)
            return False
        run.verification = final
        log.info("verification %s", final.status.value, extra={"verification_id": final.id})
        self._observer.finished(final)
        return True

    async def _reload(self, run: Run) -> None:
        """The row changed under us: adopt the disk. Alone on its database, that should not
        happen (one process owns the file); shared, another replica decided or spent meanwhile.
        """
        v = run.verification
        if self._lease is None:
            log.error("verification changed outside its task", extra={"verification_id": v.id})
        stored = await self._store.get(v.id)
        run.verification = stored if stored is not None else replace(v, status=Status.CANCELED)

    def _reap(self, run: Run, failure: BaseException | None) -> None:
        v = run.verification
        if run.sending is not None:
            run.sending.cancel()  # a resend still in flight is of no use to anyone now
        self._runs.pop(v.id, None)
        key = (v.owner, v.phone)
        if self._by_phone.get(key) is run:
            del self._by_phone[key]
        if self._recovering and not v.pending:
            self._ended_while_recovering.add(v.id)
        # Whatever was still queued learns the final state, or why it was not handled.
        while (letter := run.next_command()) is not None:
            command, reply = letter
            if v.pending:
                _refuse(reply, failure or asyncio.CancelledError())
            else:
                _answer(reply, v, command, Answer.NOT_PENDING)

    # -- helpers ----------------------------------------------------------------------------------

    async def _run_of(self, verification_id: str, owner: str) -> Run | Verification:
        """The verification's task, if it runs here; else, shared, the row to decide directly."""
        run = self._runs.get(verification_id)
        if run is not None and run.verification.owner == owner:
            return run
        v = await self.get(verification_id, owner=owner)
        if not v.pending:
            raise NotPending(v)
        if self._stopping:
            raise Unavailable("The service is stopping; try again shortly.")
        if self._lease is not None:
            return v  # held by another replica (or by this one, about to resume it)
        # Armed by `get` if recovery had not reached it; else its task failed: arm it now.
        return self.resume(v)

    async def _direct(self, v: Verification, command: Code | Cancel | Approve) -> Verification:
        """Decide a command for a verification whose task runs on another replica.

        The same rules, the same conditional writes as its task: a write that finds the row
        changed (decided, or an attempt spent, by another replica) decides again on the row as
        it now is, so attempts are never over- or under-spent, and one decision wins.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._write_retry_seconds
        conflicts = 0
        for delay in delays(STORE_RETRY_DELAYS):
            try:
                decision = decide(v, command, self._clock())
                match decision:
                    case Finish(final, answer):
                        if final.id in await self._store.finish(
                            [decided(final, before=v.attempts)]
                        ):
                            self._observer.finished(final)
                            if answer is Answer.VERIFICATION:
                                return final
                            raise NotPending(final)
                    case Spend(spent):
                        if await self._store.attempted(v, spent):
                            return spent
                    case _:
                        raise NotPending(v)
                conflicts += 1
                if conflicts >= MAX_CONFLICTS:
                    raise _busy()
                stored = await self._store.get(v.id)
                if stored is None:
                    raise NotFound(f"Verification '{v.id}' does not exist.")
                v = stored
            except StoreUnavailable:
                if loop.time() + delay > give_up_at:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: delays() never ends")

    async def _command(self, run: Run, command: Command) -> Verification:
        if self._runs.get(run.verification.id) is not run:  # reaped while the caller waited
            if isinstance(command, Resend):
                raise _Gone()
            v = run.verification
            if v.pending:
                raise Unavailable("The service is stopping; try again shortly.")
            raise NotPending(v)
        if run.queued >= self._settings.max_queued_commands:
            raise RateLimited(
                "Too many requests are waiting for this verification.",
                retry_after=1.0,
                code="too_many_requests",
            )
        reply: asyncio.Future[Verification] = asyncio.get_running_loop().create_future()
        run.deliver(command, reply)
        return await reply

    def _replayed(self, holder: KeyHolder, digest: bytes) -> Verification:
        if holder.request_hash != digest:
            raise Unprocessable(
                "Idempotency-Key was already used with a different request.",
                code="idempotency_key_reused",
            )
        run = self._runs.get(holder.verification.id)
        if run is None or self._lease is not None:
            return holder.verification
        return run.verification


def _answer(
    reply: asyncio.Future[Verification] | None,
    v: Verification,
    command: Command,
    outcome: Answer | KeyHolder,
) -> None:
    if reply is None or reply.done():
        return
    if isinstance(outcome, KeyHolder):
        reply.set_exception(_Replayed(outcome))
    elif outcome is Answer.VERIFICATION:
        reply.set_result(v)
    elif isinstance(command, Resend):
        reply.set_exception(_Gone())
    else:
        reply.set_exception(NotPending(v))


def _idle(run: Run) -> bool:
    """Waiting for its code or its deadline, and for nothing else."""
    return run.waiter is not None and run.task is not None and run.sending is None


def _same_service(pending: Verification, policy: Policy) -> None:
    """One verification pending per number: a start under another Service is refused."""
    if pending.service != policy.service:
        raise Conflict(
            "A verification is pending for this number under another service; cancel it or"
            " wait for it to end.",
            code="pending_in_another_service",
        )


def _busy() -> Unavailable:
    return Unavailable("The verification is changing too fast to decide now; try again.")


def _handed_over() -> Unavailable:
    return Unavailable("The verification was handed over to another replica; ask again.")


def _refuse(reply: asyncio.Future[Verification] | None, exc: BaseException) -> None:
    if reply is None or reply.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        # Cut short mid-write, the change may yet be on disk: asking again shows which.
        reply.set_exception(
            Unavailable("The service is stopping; ask again shortly: the request may have applied.")
        )
    else:
        reply.set_exception(exc)
