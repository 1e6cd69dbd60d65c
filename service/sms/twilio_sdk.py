"""The Twilio SDK's side of the Twilio sender: its client, pointed where the settings say, and
its errors turned into ours.

Imported by `service.sms.twilio` on the first send, in a thread: the SDK and `requests` with it
take a tenth of a second to import, which a restart would otherwise spend before it can answer.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from service.config import SmsSettings
from service.errors import SmsRejected, SmsUnavailable

PHONE_NUMBER = re.compile(r"\+?\d{6,}")

#: What the SDK raises when Twilio answers with an error.
ERRORS = (TwilioRestException, TwilioServiceException)


class _HeaderAuthHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's aiohttp client, sending basic auth as a header (aiohttp 3.14 deprecates both
    `aiohttp.BasicAuth` and `auth=`, which twilio 9.13 uses on every request), and formatting
    its INFO lines about each request only when INFO is on."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        if auth is not None:
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers = {**(headers or {}), "Authorization": f"Basic {credentials}"}
        return await super().request(method, url, headers=headers, **kwargs)

    # The SDK formats its log lines (all its headers) before the logger looks at the level.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request(kwargs)

    def log_response(self, status_code: int, response: Any) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_response(status_code, response)


def make_client(settings: SmsSettings) -> Any:
    """The SDK's client on its asyncio HTTP client; it needs a running loop, so make it in one."""
    http_client = _HeaderAuthHttpClient(timeout=settings.timeout_seconds)
    client = Client(settings.account_sid, str(settings.auth_token), http_client=http_client)
    # The SDK would rewrite the host from TWILIO_EDGE / TWILIO_REGION in the environment;
    # `api_base_url` is the one setting that says where Twilio is.
    client.edge = client.region = None
    client.api.base_url = settings.api_base_url
    return client


def classify(exc: TwilioRestException | TwilioServiceException) -> SmsRejected | SmsUnavailable:
    """Twilio's refusal as our error: a 4xx other than 429 is permanent, the rest transient."""
    status = int(exc.status)
    reason = f"twilio {exc.code}: {_message(exc)}"
    if 400 <= status < 500 and status != 429:
        return SmsRejected(reason)
    return SmsUnavailable(reason)


def _message(exc: TwilioRestException | TwilioServiceException) -> str:
    if isinstance(exc, TwilioServiceException):
        text = str(exc.title)
    else:
        # The SDK prefixes Twilio's own message, if any, with "Unable to create record: ".
        _, _, twilio_says = str(exc.msg).partition(": ")
        text = twilio_says or str(exc.msg)
    # Twilio quotes the number back; reasons are stored and logged, phone numbers should not be.
    return PHONE_NUMBER.sub("<number>", text)[:200]
