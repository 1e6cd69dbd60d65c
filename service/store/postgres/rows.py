"""Verifications as rows of `verifications`, and back: the one place that knows their columns."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]

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


def count(status: str) -> int:
    """The rows a command changed, from its status ("UPDATE 1", "INSERT 0 1", "DELETE 3")."""
    return int(status.rpartition(" ")[2])


async def redact_bodies(
    db: asyncpg.Connection,
    table: Literal["outbox", "webhook_deliveries"],
    phones: Mapping[str, str],
) -> None:
    """Mask `to` in the outcome bodies `table` holds for these verifications, as their rows now
    are. In Python, not with jsonb_set: a body that is not JSON (hand-edited) is left as it is
    instead of failing the sweep, and the body keeps its key order and compact form.
    """
    if not phones:
        return
    rows = await db.fetch(
        f"SELECT seq, verification_id, body FROM {table} WHERE verification_id = ANY($1::text[])",
        list(phones),
    )
    rewritten = []
    for seq, verification_id, body in rows:
        try:
            event = json.loads(body)
        except ValueError:
            continue
        if isinstance(event, dict):
            event["to"] = phones[verification_id]
            rewritten.append((json.dumps(event, separators=(",", ":")), seq))
    if rewritten:
        await db.executemany(f"UPDATE {table} SET body = $1 WHERE seq = $2", rewritten)
