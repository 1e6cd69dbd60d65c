"""Decisions: what a command does to a verification, as a pure function of both and the time.

The orchestrator's task applies what `decide` says (store writes, the SMS, the key claim) and
answers the caller; keeping the rules here, away from the I/O, lets them be read in one screen
and tested without an event loop. Callers send `Code`, `Cancel`, `Approve` and `Resend`; the
SMS activity reports `Sent` and `SendFailed`; the timer brings `Deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import ClassVar

from service.models import Status, Verification

# -- commands -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Code:
    """A code was received at `received_at`; whether it `matches` is checked on arrival."""

    matches: bool
    received_at: float


@dataclass(frozen=True, slots=True)
class Cancel:
    pass


@dataclass(frozen=True, slots=True)
class Approve:
    """The caller vouches for the person (Twilio's `update(status="approved")`): no code, no
    attempt spent; the deadline still wins over one that arrives after it.
    """

    received_at: float


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the code again; a resend's idempotency `key` is claimed only while it is pending."""

    key: str | None = None
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class Sent:
    """The SMS activity's report: the provider took the message."""

    sms_id: str


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The SMS activity's report: the first send failed for good."""

    reason: str


@dataclass(frozen=True, slots=True)
class Deadline:
    """The deadline's timer rang (its clock may disagree: the timer is what counts)."""


Command = Code | Cancel | Approve | Resend | Sent | SendFailed | Deadline

# -- decisions ------------------------------------------------------------------------------------


class Answer(Enum):
    """How a caller is answered once the decision is applied."""

    #: With the verification as it then is.
    VERIFICATION = "verification"
    #: That it is final, and not by this command's doing.
    NOT_PENDING = "not_pending"


@dataclass(frozen=True, slots=True)
class Finish:
    """Commit `final`; the caller hears `answer` if it applied, else what the disk holds."""

    final: Verification
    answer: Answer = Answer.VERIFICATION


@dataclass(frozen=True, slots=True)
class Spend:
    """Commit a wrong code's spent attempt, before the caller hears of it."""

    spent: Verification
    answer: ClassVar[Answer] = Answer.VERIFICATION


@dataclass(frozen=True, slots=True)
class SendAgain:
    """Claim `key`, if any (taken, the request is a replay), then send the code again."""

    key: str | None
    digest: bytes
    answer: ClassVar[Answer] = Answer.VERIFICATION


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Record the SMS as sent: a restart then does not send it again."""

    sent: Verification
    #: No one waits for a report: the answer is never given.
    answer: ClassVar[Answer] = Answer.VERIFICATION


@dataclass(frozen=True, slots=True)
class Nothing:
    """The verification is final already: nothing changes."""

    answer: ClassVar[Answer] = Answer.NOT_PENDING


Decision = Finish | Spend | SendAgain | Checkpoint | Nothing


def decide(v: Verification, command: Command, now: float) -> Decision:
    """What `command` does to `v` at `now`; every command finds a final verification unchanged."""
    if not v.pending:
        return Nothing()
    match command:
        case Deadline():
            return Finish(replace(v, status=Status.EXPIRED, completed_at=v.expires_at))
        case Sent(sms_id):
            return Checkpoint(replace(v, sms_id=sms_id, sms_sent_at=now))
        case SendFailed(reason):
            return Finish(replace(v, status=Status.FAILED, reason=reason, completed_at=now))
        case Resend(key, digest):
            return SendAgain(key, digest)
        case Cancel():
            return Finish(replace(v, status=Status.CANCELED, completed_at=now))
        case Code(_, received_at) | Approve(received_at) if received_at >= v.expires_at:
            # The deadline decided, not the code, even if the timer has not rung yet.
            expired = replace(v, status=Status.EXPIRED, completed_at=v.expires_at)
            return Finish(expired, Answer.NOT_PENDING)
        case Approve(received_at):
            return Finish(replace(v, status=Status.APPROVED, completed_at=received_at))
        case Code(True, received_at):
            attempts = v.attempts + 1
            return Finish(
                replace(v, status=Status.APPROVED, attempts=attempts, completed_at=received_at)
            )
        case Code(False, received_at) if v.attempts_left <= 1:
            final = replace(
                v,
                status=Status.MAX_ATTEMPTS_REACHED,
                attempts=v.attempts + 1,
                attempts_left=0,
                completed_at=received_at,
            )
            return Finish(final)
        case Code(False, _):
            return Spend(replace(v, attempts=v.attempts + 1, attempts_left=v.attempts_left - 1))
    raise AssertionError(f"unknown command {command!r}")
