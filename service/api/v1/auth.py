"""This surface's authentication: a bearer API key on every request it is given."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.api.credentials import ApiKeys
from service.config import Secret
from service.errors import Unauthorized

#: Which key made the request: the first twelve hex digits of its digest, or "-" with none set.
api_key_id = web.RequestKey("api_key_id", str)


def authentication(keys: tuple[Secret, ...]) -> Middleware:
    """Bearer keys for every route of the surface it is mounted on; none configured, no check.

    It decides by where it is, not by the path: each request the sub-application is given passes
    it, its unknown paths and wrong methods included, so a route added there is never public.
    """
    known = ApiKeys(keys)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[api_key_id] = _key_id(request, known) if known else "-"
        return await handler(request)

    return authenticate


def _key_id(request: web.Request, known: ApiKeys) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("An API key is required: Authorization: Bearer <key>.")
    found = known.fingerprint(token.strip())
    if found is None:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    return found
