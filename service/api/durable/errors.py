"""This surface's errors, in the platform's words: its statuses, and `{"Message": ...}` bodies.

The Durable extension answers a refusal with ASP.NET's error body, `{"Message": "..."}`, and
most of them with a bare status: 404 for an unknown instance, 410 for a finished one, 400 for a
body that is not JSON. The domain's errors map onto those; what the platform does and this
service does not (suspend, purge, ...) is a `Refusal` with the status the platform would give.
"""

from __future__ import annotations

import json

from aiohttp import web

from service.api.refusals import allow_header, refusal_headers, refusals
from service.errors import (
    BadRequest,
    Conflict,
    NotFound,
    NotPending,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
    VerificationError,
)

#: This surface's statuses for the domain's errors; a subclass takes its nearest ancestor's.
#: The platform has no 409 for a finished instance, nor a 422 or a 415: it says 410 and 400.
STATUSES: dict[type[VerificationError], int] = {
    BadRequest: 400,
    Unprocessable: 400,
    UnsupportedMediaType: 400,
    Unauthorized: 401,
    Conflict: 409,
    NotFound: 404,
    NotPending: 410,
    PayloadTooLarge: 413,
    RateLimited: 429,
    Unavailable: 503,
}


class Refusal(VerificationError):
    """What the platform does and this surface does not, answered with the platform's status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(error: VerificationError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUSES:
            return STATUSES[cls]
    return 500


def message(text: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"Message": text}, status=status, headers=headers, dumps=_dumps)


def error_response(error: VerificationError) -> web.Response:
    if isinstance(error, Refusal):
        return message(error.message, error.status)
    headers = refusal_headers(error, 'Bearer realm="durabletask"')
    return message(error.message, status_of(error), headers)


def _http(request: web.Request, exc: web.HTTPException) -> web.Response:
    return message(exc.reason, exc.status, allow_header(exc) or None)


def _internal() -> web.Response:
    return message("Something went wrong while processing your request", 500)


#: Every error as `{"Message": ...}`, an unexpected one logged and 500, as the platform's.
errors = refusals(error_response, _http, _internal)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
