"""`decide`: each command against each state, as plain functions of a verification and the time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from service.models import Status, Verification
from service.orchestrator.decisions import (
    Answer,
    Approve,
    Cancel,
    Checkpoint,
    Code,
    Command,
    Deadline,
    Finish,
    Nothing,
    Resend,
    SendAgain,
    SendFailed,
    Sent,
    Spend,
    decide,
)

CREATED_AT = 1_000.0
EXPIRES_AT = 1_600.0
NOW = 1_100.0


def pending(**changes: Any) -> Verification:
    v = Verification(
        id="VE" + "0" * 32,
        phone="+14155550100",
        reference="signup-42",
        status=Status.PENDING,
        salt=b"s" * 16,
        attempts_left=3,
        attempts=0,
        created_at=CREATED_AT,
        expires_at=EXPIRES_AT,
    )
    return replace(v, **changes)


def test_the_right_code_approves_at_its_arrival_and_counts_the_attempt() -> None:
    decision = decide(pending(), Code(True, received_at=NOW), NOW + 5)

    assert decision == Finish(
        pending(status=Status.APPROVED, attempts=1, completed_at=NOW), Answer.VERIFICATION
    )


def test_approving_spends_no_attempt() -> None:
    decision = decide(pending(attempts=1, attempts_left=2), Approve(received_at=NOW), NOW + 5)

    approved = pending(status=Status.APPROVED, attempts=1, attempts_left=2, completed_at=NOW)
    assert decision == Finish(approved, Answer.VERIFICATION)


def test_approving_after_the_deadline_is_too_late() -> None:
    decision = decide(pending(), Approve(received_at=EXPIRES_AT), EXPIRES_AT)

    expired = pending(status=Status.EXPIRED, completed_at=EXPIRES_AT)
    assert decision == Finish(expired, Answer.NOT_PENDING)


def test_a_wrong_code_spends_an_attempt_and_stays_pending() -> None:
    decision = decide(pending(), Code(False, received_at=NOW), NOW)

    assert decision == Spend(pending(attempts=1, attempts_left=2))
    assert decision.answer is Answer.VERIFICATION


def test_a_wrong_code_on_the_last_attempt_ends_it() -> None:
    v = pending(attempts=2, attempts_left=1)

    decision = decide(v, Code(False, received_at=NOW), NOW)

    final = replace(v, status=Status.MAX_ATTEMPTS_REACHED, attempts=3, attempts_left=0)
    assert decision == Finish(replace(final, completed_at=NOW), Answer.VERIFICATION)


def test_the_right_code_on_the_last_attempt_still_approves() -> None:
    v = pending(attempts=2, attempts_left=1)

    decision = decide(v, Code(True, received_at=NOW), NOW)

    assert isinstance(decision, Finish)
    assert (decision.final.status, decision.final.attempts_left) == (Status.APPROVED, 1)


@pytest.mark.parametrize("matches", [True, False])
def test_a_code_received_exactly_at_the_deadline_is_expired(matches: bool) -> None:
    decision = decide(pending(), Code(matches, received_at=EXPIRES_AT), EXPIRES_AT)

    # The deadline decided, not the code: its caller is told it is no longer pending.
    expired = pending(status=Status.EXPIRED, completed_at=EXPIRES_AT)
    assert decision == Finish(expired, Answer.NOT_PENDING)


def test_a_code_received_just_before_the_deadline_counts_even_if_handled_after() -> None:
    received = EXPIRES_AT - 0.001

    decision = decide(pending(), Code(True, received_at=received), EXPIRES_AT + 1)

    assert isinstance(decision, Finish)
    assert (decision.final.status, decision.final.completed_at) == (Status.APPROVED, received)


def test_cancel_of_a_pending_verification_ends_it_now() -> None:
    decision = decide(pending(), Cancel(), NOW)

    assert decision == Finish(pending(status=Status.CANCELED, completed_at=NOW))
    assert decision.answer is Answer.VERIFICATION


def test_resend_of_a_pending_verification_sends_again_with_its_key() -> None:
    decision = decide(pending(), Resend("retry-1", b"digest"), NOW)

    assert decision == SendAgain("retry-1", b"digest")


def test_the_deadline_expires_at_the_deadline_whatever_the_clock_says() -> None:
    # The timer has waited the time asked for; a wall clock set back does not undo that.
    expired = pending(status=Status.EXPIRED, completed_at=EXPIRES_AT)

    assert decide(pending(), Deadline(), NOW) == Finish(expired)
    assert decide(pending(), Deadline(), EXPIRES_AT + 60) == Finish(expired)


def test_a_sent_sms_is_checkpointed_with_its_id_and_time() -> None:
    decision = decide(pending(), Sent("SM123"), NOW)

    assert decision == Checkpoint(pending(sms_id="SM123", sms_sent_at=NOW))


def test_a_failed_first_send_ends_it_failed_with_the_reason() -> None:
    decision = decide(pending(), SendFailed("21211: invalid number"), NOW)

    expected = pending(status=Status.FAILED, reason="21211: invalid number", completed_at=NOW)
    assert decision == Finish(expected)


@pytest.mark.parametrize("key", [None, "retry-1"])
def test_resend_of_a_final_verification_sends_nothing_and_claims_no_key(key: str | None) -> None:
    approved = pending(status=Status.APPROVED, attempts=1, completed_at=NOW)

    decision = decide(approved, Resend(key, b"digest"), NOW)

    # Told it is not pending, the start makes a new verification instead.
    assert decision == Nothing()
    assert decision.answer is Answer.NOT_PENDING


FINAL = [s for s in Status if s is not Status.PENDING]
COMMANDS: list[Command] = [
    Code(True, received_at=NOW),
    Code(False, received_at=NOW),
    Cancel(),
    Approve(received_at=NOW),
    Resend(),
    Resend("retry-1", b"digest"),
    Sent("SM123"),
    SendFailed("late"),
    Deadline(),
]


@pytest.mark.parametrize("status", FINAL)
@pytest.mark.parametrize("command", COMMANDS, ids=repr)
def test_a_final_verification_is_left_as_it_is(status: Status, command: Command) -> None:
    decision = decide(pending(status=status, completed_at=NOW), command, NOW)

    assert decision == Nothing()
    assert decision.answer is Answer.NOT_PENDING


def test_deciding_changes_nothing_in_place() -> None:
    v = pending()

    for command in COMMANDS:
        decide(v, command, NOW)

    assert v == pending()
