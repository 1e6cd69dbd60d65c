"""A pending verification as a store is handed one, for the store tests of every backend."""

from __future__ import annotations

import zlib

from service.models import Status, Verification


def verification(id: str = "VEaaaa") -> Verification:
    """Pending, with a number of its own: one is pending per number where replicas share."""
    return Verification(
        id=id,
        phone=phone_of(id),
        reference="order-1",
        status=Status.PENDING,
        salt=b"salt",
        attempts_left=3,
        attempts=0,
        created_at=900.0,
        expires_at=990.0,
    )


def phone_of(verification_id: str) -> str:
    """The number `verification(verification_id)` is for: +1 415 then 7 digits of its id."""
    return f"+1415{zlib.crc32(verification_id.encode()) % 10**7:07d}"
