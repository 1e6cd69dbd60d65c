"""A verification: its status, its deadline, who owns it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

#: Unix seconds now; every module takes one, so tests and the store can be given another.
Clock = Callable[[], float]


class Status(StrEnum):
    """Statuses in Twilio Verify's words; every one but `pending` is final."""

    #: Waiting for the code; the SMS may still be on its way.
    PENDING = "pending"
    #: The right code arrived before the deadline.
    APPROVED = "approved"
    #: The deadline passed without the right code.
    EXPIRED = "expired"
    #: The last allowed wrong code arrived.
    MAX_ATTEMPTS_REACHED = "max_attempts_reached"
    #: The caller canceled it.
    CANCELED = "canceled"
    #: The SMS could not be delivered; `reason` says why.
    FAILED = "failed"


@dataclass(slots=True)
class Verification:
    """One verification as stored; times are Unix seconds (UTC), deadlines absolute.

    The code is not here: it is derived from `salt` and a secret kept outside the database.
    """

    id: str
    phone: str
    reference: str | None
    status: Status
    salt: bytes
    attempts_left: int
    attempts: int
    created_at: float
    expires_at: float
    completed_at: float | None = None
    sms_sent_at: float | None = None
    sms_id: str | None = None
    reason: str | None = None
    #: The fingerprint of the API key that started it; "-" when authentication is off.
    owner: str = "-"
    #: The Twilio Verify Service (its SID) it was started in; "" when started on another surface.
    service: str = ""
    #: The digits of its code, fixed at its start; 0 (rows from before): `verification.code_length`.
    code_length: int = 0
    #: When its code was sent again (asked to be), first to last, as Unix seconds.
    resends: tuple[float, ...] = ()

    @property
    def pending(self) -> bool:
        return self.status is Status.PENDING


@dataclass(frozen=True, slots=True)
class Policy:
    """How new verifications are made: what a Twilio Verify Service sets; None, the default."""

    #: Recorded with each verification it makes ("" for the service's own default).
    service: str = ""
    code_length: int | None = None
    ttl_seconds: float | None = None
    max_attempts: int | None = None


#: The service's own settings, for every surface but Twilio's Services.
DEFAULT_POLICY = Policy()


def rfc3339(timestamp: float) -> str:
    """Unix seconds as RFC 3339 in UTC with millisecond precision, e.g. 2026-01-02T03:04:05.678Z."""
    # time.gmtime, not datetime: three of these go into every answer.
    # Rounded to the microsecond first (0.6 is stored as 0.59999...), then cut to milliseconds.
    seconds, micros = divmod(round(timestamp * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros // 1000:03d}Z"


def request_digest(phone: str, reference: str | None, service: str = "") -> bytes:
    """What an idempotency key was first used with, without keeping the number in the clear."""
    # The service only where there is one, so keys recorded before it existed still match.
    fields = [phone, reference, service] if service else [phone, reference]
    return hashlib.sha256(json.dumps(fields).encode()).digest()
