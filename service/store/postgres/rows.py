"""Verifications as rows of `verifications`, and back: the one place that knows their columns."""

from __future__ import annotations

import sys
from typing import Any

from service.models import Status, Verification

COLUMNS = (
    "id, phone, reference, status, salt, attempts_left, attempts, created_at, expires_at,"
    " completed_at, sms_sent_at, sms_id, reason, owner, service, code_length, resends"
)
SELECT_VERIFICATION = f"SELECT {COLUMNS} FROM verifications WHERE id = $1"


def as_row(v: Verification) -> tuple[Any, ...]:
    """The values of `COLUMNS`, in order."""
    # Spelled out: dataclasses.astuple deep-copies, and this runs for every start.
    return (
        v.id, v.phone, v.reference, v.status.value, v.salt, v.attempts_left, v.attempts,
        v.created_at, v.expires_at, v.completed_at, v.sms_sent_at, v.sms_id, v.reason, v.owner,
        v.service, v.code_length, list(v.resends),
    )  # fmt: skip


def as_verification(row: Any) -> Verification:
    """The verification a row of `COLUMNS` holds."""
    # Columns are in field order; the status and the resends need turning back into theirs.
    # The owner and the service are a few strings shared by a million: interned, kept once.
    row = tuple(row)
    return Verification(  # type: ignore[call-arg]
        *row[:3],
        Status(row[3]),
        *row[4:13],
        sys.intern(row[13]),
        sys.intern(row[14]),
        row[15],
        tuple(row[16]),
    )


def prefixed(alias: str) -> str:
    """`COLUMNS` of the table named `alias` in a join."""
    return ", ".join(f"{alias}.{c}" for c in COLUMNS.split(", "))
