"""Middlewares: every error rendered as `{"error": ...}`, and API keys checked."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from service.api.v1.render import error_body
from service.config import Secret
from service.errors import (
    BadRequest,
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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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
    NotFound: 404,
    NotPending: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    RateLimited: 429,
    Unavailable: 503,
}

api_key_id = web.RequestKey("api_key_id", str)


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


def authentication(keys: tuple[Secret, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Bearer keys for everything under /verifications; none configured means no check."""
    digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if digests and request.path.startswith("/verifications"):
            request[api_key_id] = _key_id(request, digests)
        else:
            request[api_key_id] = "-"
        return await handler(request)

    return authenticate


def _key_id(request: web.Request, digests: list[bytes]) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("An API key is required: Authorization: Bearer <key>.")
    # Digests are compared, all of them, so neither the length nor the position of a match leaks.
    offered = hashlib.sha256(token.strip().encode()).digest()
    found = None
    for digest in digests:
        if hmac.compare_digest(offered, digest):
            found = digest
    if found is None:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    return found.hex()[:12]


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
