"""This surface's errors: the domain's by its status table, and aiohttp's, as `{"error": ...}`."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

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

log = logging.getLogger(__name__)

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
    response = web.json_response(error_body(error), status=status_of(error), dumps=_dumps)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="verifications"'
    if isinstance(error, RateLimited | Unavailable):
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as `{"error": {"code", "message"}}`, an unexpected one logged and 500."""
    try:
        return await handler(request)
    except VerificationError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "http_error")
        body = {"error": {"code": code, "message": exc.reason}}
        return web.json_response(body, status=exc.status, headers=_allow(exc), dumps=_dumps)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        body = {"error": {"code": "internal_error", "message": "Internal error."}}
        return web.json_response(body, status=500, dumps=_dumps)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
