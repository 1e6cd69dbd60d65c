"""What this surface shows of a verification and of an error, as JSON."""

from __future__ import annotations

from typing import Any

from service.errors import NotPending, VerificationError
from service.models import Verification, rfc3339


def view(v: Verification) -> dict[str, Any]:
    """The verification as this API shows it: never the code, nor anything it could come from."""
    return {
        "id": v.id,
        "status": v.status.value,
        "to": v.phone,
        "reference": v.reference,
        "attempts_left": v.attempts_left,
        "created_at": rfc3339(v.created_at),
        "expires_at": rfc3339(v.expires_at),
        "completed_at": rfc3339(v.completed_at) if v.completed_at is not None else None,
        "reason": v.reason,
    }


def error_body(error: VerificationError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": error.code, "message": error.message}}
    if isinstance(error, NotPending):
        body["verification"] = view(error.verification)
    return body
