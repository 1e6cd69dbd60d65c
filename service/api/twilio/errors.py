"""This surface's errors, in Twilio's body: `{"code", "message", "more_info", "status"}`.

The SDK raises `TwilioRestException` with that `code`, which is what clients branch on, so each
domain refusal is given the Twilio code its clients already handle: by its own stable code where
Twilio tells refusals of one kind apart (a rate limit on the number is 60203, on the account
20429), else by its class.
"""

from __future__ import annotations

import json
from typing import Any

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
from service.models import Status

#: (HTTP status, Twilio code) for the domain's and this surface's stable codes.
BY_CODE: dict[str, tuple[int, int]] = {
    "invalid_phone": (400, 60200),
    "invalid_parameter": (400, 60200),
    "missing_to_or_sid": (400, 60221),
    "channel_disabled": (400, 60223),
    "custom_code_disabled": (400, 60200),
    "country_not_allowed": (400, 60605),
    "number_type_not_allowed": (400, 60205),
    "rate_limited_phone": (429, 60203),
    "max_check_attempts": (429, 60202),
    "service_not_configurable": (403, 20403),
}

#: (HTTP status, Twilio code) for the others, by class; a subclass takes its nearest ancestor's.
BY_CLASS: dict[type[VerificationError], tuple[int, int]] = {
    BadRequest: (400, 60200),
    Unauthorized: (401, 20003),
    Conflict: (409, 20409),
    NotFound: (404, 20404),
    NotPending: (404, 20404),
    PayloadTooLarge: (413, 20001),
    UnsupportedMediaType: (415, 20001),
    Unprocessable: (400, 60200),
    RateLimited: (429, 20429),
    Unavailable: (503, 20503),
}

#: aiohttp's own refusals.
HTTP_CODES = {404: 20404, 405: 20004, 413: 20001}


def status_and_code(error: VerificationError) -> tuple[int, int]:
    if isinstance(error, NotPending) and error.verification.status is Status.MAX_ATTEMPTS_REACHED:
        return BY_CODE["max_check_attempts"]
    if error.code in BY_CODE:
        return BY_CODE[error.code]
    for cls in type(error).__mro__:
        if cls in BY_CLASS:
            return BY_CLASS[cls]
    return 500, 20500


def body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def error_response(error: VerificationError) -> web.Response:
    status, code = status_and_code(error)
    message = error.message
    if isinstance(error, NotPending):
        # A finished verification is gone on this surface, as on Twilio's.
        if status == 404:
            message = f"The requested resource /Verifications/{error.verification.id} was not found"
        else:
            message = "Max check attempts reached"
    headers = refusal_headers(error, 'Basic realm="Twilio API"')
    return _json(body(status, code, message), status, headers)


def _http(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = HTTP_CODES.get(exc.status, 20001)
    message = exc.reason
    if exc.status == 404:
        message = f"The requested resource {request.path} was not found"
    return _json(body(exc.status, code, message), exc.status, allow_header(exc))


def _internal() -> web.Response:
    return _json(body(500, 20500, "Internal error."), 500)


#: Every error in Twilio's body, an unexpected one logged and 500.
errors = refusals(error_response, _http, _internal)


def _json(
    value: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=lambda v: json.dumps(v))
