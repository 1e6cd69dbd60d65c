"""This surface's authentication: Functions' keys are this service's API keys.

Azure Functions takes its key as the `code` query parameter or the `x-functions-key` header, and
the URLs the platform hands out carry it as `code=`; a bearer key, as v1 takes it, works too.
The key is named by the same id on every surface, so a verification started here is the same
key's there.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.api.credentials import ApiKeys
from service.api.v1.auth import api_key_id
from service.config import Secret
from service.errors import Unauthorized

#: The key the request offered, as it was offered, to write into the URLs answered (`code=`):
#: the caller already holds it, and the lab follows those URLs as they are. None when none was.
offered_key: web.RequestKey[str | None] = web.RequestKey("offered_key")


def authentication(keys: tuple[Secret, ...]) -> Middleware:
    """A configured key on every route of the sub-application it is mounted on; none, no check."""
    known = ApiKeys(keys)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        offered = _offered(request)
        request[offered_key] = offered
        if not known:
            request[api_key_id] = "-"
            return await handler(request)
        if offered is None:
            raise Unauthorized(
                "An API key is required: ?code=<key>, x-functions-key: <key>"
                " or Authorization: Bearer <key>."
            )
        found = known.fingerprint(offered.strip())
        if found is None:
            raise Unauthorized("The API key is not valid.", code="invalid_api_key")
        request[api_key_id] = found
        return await handler(request)

    return authenticate


def _offered(request: web.Request) -> str | None:
    # Functions' own order: the query parameter first, then its header.
    code = request.query.get("code") or request.headers.get("x-functions-key")
    if code:
        return code
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
