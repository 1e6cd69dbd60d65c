"""The outcome event, both ways: the body the service sends and the `Outcome` a consumer reads.

One per finished verification. With a signing key, a message also carries the attribute
`signature`: "v1=" and the hex HMAC-SHA256 of the body under the key, so a consumer can tell the
service's outcomes from messages anyone else with the right to send to the queue put there.

MalformedMessage             the body is not an outcome event; it is left for the DLQ
  └── BadSignature           the signature is missing or wrong
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

#: An SQS message, as `receive_message` returns it.
Message = dict[str, Any]


class MalformedMessage(Exception):
    """The body is not an outcome event; no handler can succeed, so it is left for the DLQ."""


class BadSignature(MalformedMessage):
    """The signature is missing or wrong: the service did not send this, or not this body."""


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
    """Encode an outcome; times are RFC 3339 strings in UTC. `Outcome.from_message` reads it."""
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


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verification's outcome as received; `raw` is the whole event `outcome_body` encoded.

    Only `id` and `status` are required of a message: the others are None when it lacks them.
    """

    id: str
    status: str
    to: str | None
    reference: str | None
    reason: str | None
    attempts: int | None
    created_at: str | None
    completed_at: str | None
    raw: dict[str, Any]
    message_id: str
    #: 1 on first delivery; more means an earlier handling failed or was not acknowledged.
    receive_count: int

    @classmethod
    def from_message(cls, message: Message, signing_key: str = "") -> Outcome:
        """Parse an SQS message; with a key, only once its signature proves the service sent it."""
        if signing_key:
            _check_signature(message, signing_key)
        try:
            event = json.loads(message["Body"])
        except ValueError:
            raise MalformedMessage(f"Message {message['MessageId']} is not JSON.") from None
        if not isinstance(event, dict) or not all(
            isinstance(event.get(key), str) for key in ("id", "status")
        ):
            raise MalformedMessage(f"Message {message['MessageId']} has no outcome id and status.")
        if event.get("event") != EVENT:
            raise MalformedMessage(
                f"Message {message['MessageId']} is not a {EVENT} event: {event.get('event')!r}."
            )
        return cls(
            id=event["id"],
            status=event["status"],
            to=event.get("to"),
            reference=event.get("reference"),
            reason=event.get("reason"),
            attempts=event.get("attempts"),
            created_at=event.get("created_at"),
            completed_at=event.get("completed_at"),
            raw=event,
            message_id=message["MessageId"],
            receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
        )


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


def _check_signature(message: Message, key: str) -> None:
    attribute = message.get("MessageAttributes", {}).get(SIGNATURE_ATTRIBUTE, {})
    signature = attribute.get("StringValue")
    if signature is None:
        raise BadSignature(f"Message {message['MessageId']} is not signed.")
    if not signature_valid(key, message["Body"], signature):
        raise BadSignature(f"Message {message['MessageId']} has a wrong signature.")
