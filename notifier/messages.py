"""The outcome event: the body every queue consumer receives, one per finished verification.

With a signing key, a message also carries the attribute `signature`: "v1=" and the hex
HMAC-SHA256 of the body under the key, so a consumer can tell the service's outcomes from
messages anyone else with the right to send to the queue put there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

EVENT = "verification.completed"
#: The message attribute holding the signature; its version prefix leaves room for a new scheme.
SIGNATURE_ATTRIBUTE = "signature"
SIGNATURE_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outcome waiting in the service's outbox; `body` is the message body, ready to send."""

    seq: int
    verification_id: str
    status: str
    body: str
    #: Times SQS refused it so far; the publisher's back-off grows with it.
    attempts: int = 0


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


def sign(key: str, body: str) -> str:
    """The `signature` attribute of a message with this body."""
    digest = hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signature_valid(key: str, body: str, signature: str | None) -> bool:
    """Whether `signature` is the body's under `key`; compared in constant time."""
    if signature is None:
        return False
    # Bytes, as compare_digest takes str only when ASCII, and anyone can put text there.
    return hmac.compare_digest(sign(key, body).encode(), signature.encode(errors="replace"))
