"""Refusals, as every surface answers them: the domain's errors, aiohttp's, and the unexpected.

The catching is one middleware for all; a surface gives only its wording of each kind (its
body, its statuses). The headers that go with a refusal are the same on every surface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.errors import RateLimited, Unauthorized, Unavailable, VerificationError

log = logging.getLogger(__name__)

Domain = Callable[[VerificationError], web.Response]
Http = Callable[[web.Request, web.HTTPException], web.Response]
Internal = Callable[[], web.Response]


def refusals(domain: Domain, http: Http, internal: Internal) -> Middleware:
    """Every error of the surface it is mounted on, answered in its words; a bug logged, 500."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except VerificationError as error:
            return domain(error)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http(request, exc)
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            return internal()

    return errors


def refusal_headers(error: VerificationError, challenge: str) -> dict[str, str]:
    """`WWW-Authenticate` (`challenge`, for a missing key) and `Retry-After`, as they apply."""
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = challenge
    if isinstance(error, RateLimited | Unavailable):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return headers


def allow_header(exc: web.HTTPException) -> dict[str, str]:
    """aiohttp's `Allow` of a 405, kept on the surface's own body."""
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
