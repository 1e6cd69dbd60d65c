"""This surface's errors: the domain's by its status table, and aiohttp's, as `{"error": ...}`."""

from __future__ import annotations

import json

from aiohttp import web

from service.api.refusals import allow_header, refusal_headers, refusals
from service.api.v1.render import error_body
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

#: aiohttp's own refusals, under the contract's stable codes.
HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: PayloadTooLarge.code,
}

#: This surface's statuses for the domain's errors; a subclass takes its nearest ancestor's.
STATUSES: dict[type[VerificationError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Conflict: 409,
    NotFound: 404,
    NotPending: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    RateLimited: 429,
    Unavailable: 503,
}


def status_of(error: VerificationError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUSES:
            return STATUSES[cls]
    return 500


def error_response(error: VerificationError) -> web.Response:
    headers = refusal_headers(error, 'Bearer realm="verifications"')
    return web.json_response(
        error_body(error), status=status_of(error), headers=headers, dumps=_dumps
    )


def _http(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = HTTP_CODES.get(exc.status, "http_error")
    body = {"error": {"code": code, "message": exc.reason}}
    return web.json_response(body, status=exc.status, headers=allow_header(exc), dumps=_dumps)


def _internal() -> web.Response:
    body = {"error": {"code": "internal_error", "message": "Internal error."}}
    return web.json_response(body, status=500, dumps=_dumps)


#: Every error as `{"error": {"code", "message"}}`, an unexpected one logged and 500.
errors = refusals(error_response, _http, _internal)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
