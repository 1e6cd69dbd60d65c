"""Errors raised by the verification domain and the adapters around it.

None of them knows HTTP: each API surface has its own table from these to its statuses and its
own error body (`service.api.v1.errors` for ours).

VerificationError            a refusal; each carries a stable code and a message for people
  ├── BadRequest             the request is malformed: not JSON, not an object, wrong types
  ├── Unauthorized           missing or unknown credentials
  ├── NotFound               no verification with that id (for this caller)
  ├── NotPending             the verification is final; carries it
  ├── PayloadTooLarge        the body is over the configured limit
  ├── UnsupportedMediaType   the body is not JSON
  ├── Unprocessable          a phone, code or reference that is not of the accepted form
  ├── RateLimited            a limit was reached; carries the seconds to wait
  └── Unavailable            the service is stopping, or busy; carries the seconds to wait
        └── StoreUnavailable the database refused a read or a write (locked, full, I/O)
SmsError                     the SMS could not be sent
  ├── SmsRejected            permanent: the provider refused it (invalid or unreachable number)
  └── SmsUnavailable         transient: 5xx, time-out or connection error; worth retrying
ConfigError                  the configuration cannot be used
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# One class for the service and notifier/, which loads settings the same way but stands alone.
from notifier.settings import ConfigError as ConfigError

if TYPE_CHECKING:
    from service.models import Verification


class VerificationError(Exception):
    """A refusal: `code` is stable, `message` is for people."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(VerificationError):
    code = "bad_request"


class Unauthorized(VerificationError):
    code = "unauthorized"


class NotFound(VerificationError):
    code = "not_found"


class NotPending(VerificationError):
    """The verification already has its final status; `verification` says which."""

    code = "not_pending"

    def __init__(self, verification: Verification) -> None:
        status = verification.status.value
        super().__init__(f"Verification '{verification.id}' is {status}.")
        self.verification = verification


class Conflict(VerificationError):
    """The request is valid, but the state of another verification stands in its way."""

    code = "conflict"


class PayloadTooLarge(VerificationError):
    code = "payload_too_large"


class UnsupportedMediaType(VerificationError):
    code = "unsupported_media_type"


class Unprocessable(VerificationError):
    code = "unprocessable"


class RateLimited(VerificationError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(VerificationError):
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StoreUnavailable(Unavailable):
    """The database failed; nothing was changed, and trying again later may work."""

    code = "database_unavailable"


class SmsError(Exception):
    """The SMS challenge could not be sent; `reason` is safe to store and show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SmsRejected(SmsError):
    pass


class SmsUnavailable(SmsError):
    pass
