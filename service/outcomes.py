"""The outcome event of a finished verification, computed here once for every caller.

The store only writes it into the outbox, beside the final state, so every backend sends the
same bytes; the event itself is defined in `notifier.events`, which its consumers read with.
"""

from __future__ import annotations

from notifier.events import outcome_body
from service.models import Verification, rfc3339
from service.store.base import Decided


def outcome_of(v: Verification) -> str:
    """The body of the event telling the queue's consumers how `v` ended."""
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


def decided(v: Verification, *, fenced: bool = False, before: int | None = None) -> Decided:
    """`v`'s final state with its outcome, as `Store.finish` takes it.

    `fenced`: decided by the deadline or the SMS, which only the verification's holder may do;
    `before`: the attempts of the state it was decided from.
    """
    return Decided(v, outcome_of(v), fenced, before)
