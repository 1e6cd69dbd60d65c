"""Errors raised by the verification domain and the adapters around it.

VerificationError            the contract's errors; each carries a stable code and an HTTP status
  ├── BadRequest             400: malformed JSON, not an object, wrong types
  ├── Unauthorized           401: missing or unknown API key
  ├── NotFound               404: no verification with that id
  ├── NotPending             409: the verification is final; carries its view
  ├── PayloadTooLarge        413: the body is over the configured limit
  ├── UnsupportedMediaType   415: the body is not JSON
  ├── Unprocessable          422: a phone, code or reference that is not of the accepted form
  ├── RateLimited            429: a limit was reached; carries the seconds to wait
  └── Unavailable            503: the service is stopping, or busy; carries the seconds to wait
        └── StoreUnavailable 503: the database refused a read or a write (locked, full, I/O)
SmsError                     the SMS could not be sent
  ├── SmsRejected            permanent: the provider refused it (invalid or unreachable number)
  └── SmsUnavailable         transient: 5xx, time-out or connection error; worth retrying
ConfigError                  the configuration cannot be used
"""

from __future__ import annotations

from typing import Any


class VerificationError(Exception):
    """An error of the HTTP contract: `code` is stable, `message` is for people."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(VerificationError):
    status = 400
    code = "bad_request"


class Unauthorized(VerificationError):
    status = 401
    code = "unauthorized"


class NotFound(VerificationError):
    status = 404
    code = "not_found"


class NotPending(VerificationError):
    """The verification already has its final status; the view says which."""

    status = 409
    code = "not_pending"

    def __init__(self, message: str, view: dict[str, Any]) -> None:
        super().__init__(message)
        self.view = view

    def body(self) -> dict[str, Any]:
        return {**super().body(), "verification": self.view}


class PayloadTooLarge(VerificationError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(VerificationError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(VerificationError):
    status = 422
    code = "unprocessable"


class RateLimited(VerificationError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(VerificationError):
    status = 503
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


class ConfigError(Exception):
    pass
