"""This surface's authentication: HTTP Basic, as Twilio's SDKs send it, mapped to our API keys.

The password (an auth token, or an `SK...` key's secret) must be one of `auth.api_keys`; the
caller is then the same owner as with that key on v1, and sees the same verifications. The
username (the account SID, or the `SK...` key SID) only names the account the answers show: an
`AC...` username is shown back as it came, anything else as `verify_v2.account_sid`.
"""

from __future__ import annotations

import base64
import binascii
import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.api.credentials import ApiKeys
from service.config import Secret
from service.errors import Unauthorized

#: Which key made the request (its fingerprint, as v1's), or "-" with none set.
owner_key = web.RequestKey("owner", str)
#: The `account_sid` of the answers to this request.
account_key = web.RequestKey("account_sid", str)

ACCOUNT_SID = re.compile("AC[0-9a-fA-F]{32}")


def authentication(keys: tuple[Secret, ...], account_sid: str) -> Middleware:
    """Basic credentials for every request the sub-application is given; none configured, none
    checked (but a username still names the account)."""
    known = ApiKeys(keys)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        credentials = _credentials(request)
        if known:
            if credentials is None:
                raise Unauthorized("Authenticate: HTTP Basic, an account SID and an auth token.")
            owner = known.fingerprint(credentials[1])
            if owner is None:
                raise Unauthorized("Authenticate: the credentials are not valid.")
        else:
            owner = "-"
        username = credentials[0] if credentials is not None else ""
        request[owner_key] = owner
        request[account_key] = username if ACCOUNT_SID.fullmatch(username) else account_sid
        return await handler(request)

    return authenticate


def _credentials(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon and password else None
