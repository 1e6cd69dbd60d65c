"""This surface's authentication: a bearer API key on every request it is given."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.config import Secret
from service.errors import Unauthorized

#: Which key made the request: the first twelve hex digits of its digest, or "-" with none set.
api_key_id = web.RequestKey("api_key_id", str)


def authentication(keys: tuple[Secret, ...]) -> Middleware:
    """Bearer keys for every route of the surface it is mounted on; none configured, no check.

    It decides by where it is, not by the path: each request the sub-application is given passes
    it, its unknown paths and wrong methods included, so a route added there is never public.
    """
    digests = digests_of(keys)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[api_key_id] = _key_id(request, digests) if digests else "-"
        return await handler(request)

    return authenticate


def digests_of(keys: tuple[Secret, ...]) -> list[bytes]:
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def identify(token: str, digests: list[bytes]) -> str | None:
    """The id of the configured key `token` is, or None; every surface names a key by this id."""
    # Digests are compared, all of them, so neither the length nor the position of a match leaks.
    offered = hashlib.sha256(token.strip().encode()).digest()
    found = None
    for digest in digests:
        if hmac.compare_digest(offered, digest):
            found = digest
    return found.hex()[:12] if found is not None else None


def _key_id(request: web.Request, digests: list[bytes]) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("An API key is required: Authorization: Bearer <key>.")
    found = identify(token, digests)
    if found is None:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    return found
