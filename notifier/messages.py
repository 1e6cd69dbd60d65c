"""The outcome event: the body every queue consumer receives, one per finished verification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

EVENT = "verification.completed"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outcome waiting in the service's outbox; `body` is the message body, ready to send."""

    seq: int
    verification_id: str
    status: str
    body: str


def outcome_body(
    *,
    id: str,
    status: str,
    to: str,
    reference: str | None,
    attempts: int,
    created_at: str,
    completed_at: str,
    reason: str | None,
) -> str:
    """Encode an outcome; times are RFC 3339 strings in UTC."""
    event: dict[str, Any] = {
        "event": EVENT,
        "id": id,
        "status": status,
        "to": to,
        "reference": reference,
        "attempts": attempts,
        "created_at": created_at,
        "completed_at": completed_at,
        "reason": reason,
    }
    return json.dumps(event, separators=(",", ":"))
