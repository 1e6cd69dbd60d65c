"""Verifications as rows of `verifications`, and back: the one place that knows their columns."""

from __future__ import annotations

from typing import Any

from service.models import Status, Verification

COLUMNS = (
    "id, phone, reference, status, salt, attempts_left, attempts, created_at, expires_at,"
    " completed_at, sms_sent_at, sms_id, reason, owner"
)
SELECT_VERIFICATION = f"SELECT {COLUMNS} FROM verifications WHERE id = $1"


def as_row(v: Verification) -> tuple[Any, ...]:
    """The values of `COLUMNS`, in order."""
    # Spelled out: dataclasses.astuple deep-copies, and this runs for every start.
    return (
        v.id, v.phone, v.reference, v.status.value, v.salt, v.attempts_left, v.attempts,
        v.created_at, v.expires_at, v.completed_at, v.sms_sent_at, v.sms_id, v.reason, v.owner,
    )  # fmt: skip


def as_verification(row: Any) -> Verification:
    """The verification a row of `COLUMNS` holds."""
    # Columns are in field order; only the status needs turning back into its enum.
    row = tuple(row)
    return Verification(*row[:3], Status(row[3]), *row[4:])  # type: ignore[call-arg]


def prefixed(alias: str) -> str:
    """`COLUMNS` of the table named `alias` in a join."""
    return ", ".join(f"{alias}.{c}" for c in COLUMNS.split(", "))
