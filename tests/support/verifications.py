"""A pending verification as a store is handed one, for the store tests of every backend."""

from __future__ import annotations

from service.models import Status, Verification


def verification(id: str = "VEaaaa") -> Verification:
    return Verification(
        id=id,
        phone="+14155550100",
        reference="order-1",
        status=Status.PENDING,
        salt=b"salt",
        attempts_left=3,
        attempts=0,
        created_at=900.0,
        expires_at=990.0,
    )
