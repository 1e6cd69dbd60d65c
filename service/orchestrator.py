"""The orchestrator: one asyncio task per pending verification, racing the code against a timer.

Each task sends the SMS challenge, then waits on two things at once with asyncio.wait: its inbox
(codes, cancels, resends, delivered like Durable Functions' external events) and the deadline.
Whichever comes first decides; a losing inbox waiter is cancelled, a losing deadline (a future
shared per tick, see `service.deadlines`) is left to the others waiting on it. Every transition
is committed to the store before anyone is told of it, and commands are handled one at a time,
so attempts can never be over-spent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from service.codes import CodeBook
from service.config import VerificationSettings
from service.deadlines import Deadlines
from service.errors import ConfigError, NotFound, NotPending, SmsError, Unavailable, Unprocessable
from service.limits import Limits
from service.models import Status, Verification
from service.sms import SmsSender
from service.store import Store

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)
class Command:
    """An external event for one verification; `reply` is resolved once it has been handled."""

    kind: str  # "code", "cancel" or "resend"
    reply: asyncio.Future[Verification]
    code: str = ""
    received_at: float = 0.0
    #: Whether this command made the verification final (it is then answered 200, not 409).
    decided: bool = False


@dataclass(slots=True, eq=False)
class Run:
    """What the orchestrator holds in memory for one pending verification.

    `verification` is replaced, never changed in place, so handing it out is handing a snapshot.
    Everything else is made only when needed: most verifications get one command in their life,
    and the ones waiting are what a process holds by the hundred thousand.
    """

    verification: Verification
    inbox: deque[Command] | None = None
    waiter: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None

    def deliver(self, command: Command) -> None:
        # Buffered like raiseEvent: a command that arrives while the task is busy is not lost.
        if self.inbox is None:
            self.inbox = deque()
        self.inbox.append(command)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def next_command(self) -> Command | None:
        return self.inbox.popleft() if self.inbox else None


class Orchestrator:
    """Starts, resumes and steers verifications; knows nothing of HTTP."""

    def __init__(
        self,
        store: Store,
        sender: SmsSender,
        codes: CodeBook,
        limits: Limits,
        settings: VerificationSettings,
        template: str,
        clock: Clock = time.time,
    ) -> None:
        _check_template(template)
        self._limits = limits
        self._store = store
        self._sender = sender
        self._codes = codes
        self._settings = settings
        self._template = template
        self._clock = clock
        self._deadlines = Deadlines(clock)
        self._runs: dict[str, Run] = {}
        self._by_phone: dict[str, Run] = {}
        #: Called with each verification that reached a final status (metrics).
        self.on_finished: Callable[[Verification], None] = lambda v: None
        #: Called with each verification just started, not with resends or replays (metrics).
        self.on_started: Callable[[Verification], None] = lambda v: None
        #: Called after each SMS the provider took, and each that could not be sent (metrics).
        self.on_sms_sent: Callable[[], None] = lambda: None
        self.on_sms_failed: Callable[[], None] = lambda: None

    @property
    def pending_count(self) -> int:
        return len(self._runs)

    # -- commands ---------------------------------------------------------------------------------

    async def start(
        self,
        phone: str,
        reference: str | None,
        *,
        caller: str = "-",
        idempotency_key: str | None = None,
    ) -> tuple[Verification, bool]:
        """Start a verification, or resend the pending one for this phone; True if it is new.

        The row is committed before this returns; the SMS goes out from the verification's task.
        """
        if idempotency_key is not None:
            existing = await self._store.by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replayed(existing, phone, reference), False
        self._limits.admit(phone, caller)
        pending = self._by_phone.get(phone)
        if pending is not None:
            resent = await self._command(pending, Command("resend", self._reply()))
            if resent.pending:
                return resent, False
        now = self._clock()
        v = Verification(
            id="VE" + secrets.token_hex(16),
            phone=phone,
            reference=reference,
            status=Status.PENDING,
            salt=self._codes.new_salt(),
            attempts_left=self._settings.max_attempts,
            attempts=0,
            created_at=now,
            expires_at=now + self._settings.ttl_seconds,
            idempotency_key=idempotency_key,
        )
        holder = await self._store.insert(v)
        if holder is not None:  # the same key raced in from another request
            return self._replayed(holder, phone, reference), False
        self.on_started(v)
        return self.resume(v).verification, True

    async def submit_code(self, verification_id: str, code: str) -> Verification:
        """Hand a code to the verification's task and wait until it has been decided."""
        run = await self._run_of(verification_id)
        command = Command("code", self._reply(), code=code, received_at=self._clock())
        return await self._command(run, command)

    async def cancel(self, verification_id: str) -> Verification:
        run = await self._run_of(verification_id)
        return await self._command(run, Command("cancel", self._reply()))

    async def get(self, verification_id: str) -> Verification:
        run = self._runs.get(verification_id)
        if run is not None:
            return run.verification
        v = await self._store.get(verification_id)
        if v is None:
            raise NotFound(f"Verification '{verification_id}' does not exist.")
        return v

    def resume(self, v: Verification) -> Run:
        """Arm a task for a pending verification; arming one twice is harmless."""
        run = self._runs.get(v.id)
        if run is None:
            run = self._runs[v.id] = Run(v)
            self._by_phone[v.phone] = run
            run.task = asyncio.create_task(self._orchestrate(run))
        return run

    async def close(self, grace: float) -> None:
        """Stop: idle tasks at once (their state is on disk), busy ones after `grace` seconds."""
        for run in list(self._runs.values()):
            if run.waiter is not None and run.task is not None:
                run.task.cancel()
        busy = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        # A task cancelled before its first step never ran the code that reaps it.
        for run in list(self._runs.values()):
            self._reap(run, asyncio.CancelledError())

    # -- the task ---------------------------------------------------------------------------------

    async def _orchestrate(self, run: Run) -> None:
        # One coroutine for the whole life, helpers awaited only between waits: while it waits,
        # this frame and the futures of one asyncio.wait are all that a verification costs.
        loop = asyncio.get_running_loop()
        failure: BaseException | None = None
        try:
            if run.verification.sms_sent_at is None and not await self._send_challenge(run):
                return
            while run.verification.pending:
                expires_at = run.verification.expires_at
                if not run.inbox and expires_at > self._clock():
                    # The race: the inbox's waiter against the deadline, which is shared with the
                    # verifications due in the same tick, so it is left, not cancelled, if it loses.
                    waiter = run.waiter = loop.create_future()
                    deadline = self._deadlines.at(expires_at)
                    try:
                        await asyncio.wait((waiter, deadline), return_when=FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        run.waiter = None
                command = run.next_command()
                if command is None:  # the deadline won the race
                    await self._finish(run, Status.EXPIRED)
                else:
                    await self._step(run, command)
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:
            failure = exc
            extra = {"verification_id": run.verification.id}
            log.error("verification task failed", exc_info=exc, extra=extra)
        finally:
            self._reap(run, failure)

    async def _step(self, run: Run, command: Command) -> None:
        try:
            await self._handle(run, command)
        except BaseException as exc:
            _refuse(command, exc)
            raise
        self._answer(command, run)

    async def _handle(self, run: Run, command: Command) -> None:
        v = run.verification
        if command.kind == "resend":
            await self._send_challenge(run)
        elif command.kind == "cancel":
            command.decided = True
            await self._finish(run, Status.CANCELED)
        elif command.received_at >= v.expires_at:
            await self._finish(run, Status.EXPIRED)
        elif self._codes.matches(v.salt, command.code):
            command.decided = True
            await self._finish(run, Status.APPROVED, attempts=v.attempts + 1)
        elif v.attempts_left <= 1:
            command.decided = True
            await self._finish(
                run, Status.MAX_ATTEMPTS_REACHED, attempts=v.attempts + 1, attempts_left=0
            )
        else:
            spent = replace(v, attempts=v.attempts + 1, attempts_left=v.attempts_left - 1)
            await self._store.attempted(spent)
            run.verification = spent

    async def _send_challenge(self, run: Run) -> bool:
        """The SMS activity: on a permanent failure the verification ends `failed`."""
        v = run.verification
        expires_in = _duration(self._settings.ttl_seconds)
        body = self._template.format(code=self._codes.code(v.salt), expires_in=expires_in)
        try:
            sms_id = await self._sender.send(v.phone, body)
        except SmsError as exc:
            log.warning("sms failed", extra={"verification_id": v.id, "reason": exc.reason})
            self.on_sms_failed()
            await self._finish(run, Status.FAILED, reason=exc.reason)
            return False
        self.on_sms_sent()
        sent = replace(v, sms_id=sms_id, sms_sent_at=self._clock())
        await self._store.sms_sent(sent)
        run.verification = replace(
            run.verification, sms_id=sent.sms_id, sms_sent_at=sent.sms_sent_at
        )
        return True

    async def _finish(
        self,
        run: Run,
        status: Status,
        *,
        reason: str | None = None,
        attempts: int | None = None,
        attempts_left: int | None = None,
    ) -> None:
        v = run.verification
        final = replace(
            v,
            status=status,
            reason=reason,
            completed_at=self._clock(),
            attempts=v.attempts if attempts is None else attempts,
            attempts_left=v.attempts_left if attempts_left is None else attempts_left,
        )
        # The new state is only adopted once committed: memory never runs ahead of the disk.
        await self._store.finish([final])
        run.verification = final
        log.info("verification %s", status.value, extra={"verification_id": v.id})
        self.on_finished(final)

    def _reap(self, run: Run, failure: BaseException | None) -> None:
        v = run.verification
        self._runs.pop(v.id, None)
        if self._by_phone.get(v.phone) is run:
            del self._by_phone[v.phone]
        # Whatever was still queued learns the final state, or why it was not handled.
        while (command := run.next_command()) is not None:
            if v.pending:
                _refuse(command, failure or asyncio.CancelledError())
            else:
                self._answer(command, run)

    # -- helpers ----------------------------------------------------------------------------------

    async def _run_of(self, verification_id: str) -> Run:
        run = self._runs.get(verification_id)
        if run is not None:
            return run
        v = await self._store.get(verification_id)
        if v is None:
            raise NotFound(f"Verification '{verification_id}' does not exist.")
        raise NotPending(f"Verification '{verification_id}' is {v.status.value}.", v.view())

    async def _command(self, run: Run, command: Command) -> Verification:
        run.deliver(command)
        return await command.reply

    def _answer(self, command: Command, run: Run) -> None:
        if command.reply.done():
            return
        v = run.verification
        if v.pending or command.decided or command.kind == "resend":
            command.reply.set_result(v)
        else:
            command.reply.set_exception(
                NotPending(f"Verification '{v.id}' is {v.status.value}.", v.view())
            )

    def _replayed(self, v: Verification, phone: str, reference: str | None) -> Verification:
        if v.phone != phone or v.reference != reference:
            raise Unprocessable(
                "Idempotency-Key was already used with a different request.",
                code="idempotency_key_reused",
            )
        run = self._runs.get(v.id)
        return run.verification if run is not None else v

    @staticmethod
    def _reply() -> asyncio.Future[Verification]:
        return asyncio.get_running_loop().create_future()


def _refuse(command: Command, exc: BaseException) -> None:
    if command.reply.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        command.reply.set_exception(Unavailable("The service is stopping; try again shortly."))
    else:
        command.reply.set_exception(exc)


def _check_template(template: str) -> None:
    try:
        text = template.format(code="0", expires_in="1 minute")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"Config 'sms.template' may use only {{code}} and {{expires_in}}: {exc!r}."
        ) from None
    if "0" not in text or "{code}" not in template:
        raise ConfigError("Config 'sms.template' must contain {code}.")


def _duration(seconds: float) -> str:
    whole = math.ceil(seconds)
    if whole % 60 == 0:
        minutes = whole // 60
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{whole} second" + ("s" if whole != 1 else "")
