"""The Twilio sender: Messages API through the official SDK's asyncio client, one try a send."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from typing import Any

import aiohttp
from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from service.config import SmsSettings
from service.errors import ConfigError, SmsRejected, SmsUnavailable

PHONE_NUMBER = re.compile(r"\+?\d{6,}")


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


class TwilioSender:
    """Sends through Twilio's Messages API with the official SDK's asyncio client."""

    def __init__(self, settings: SmsSettings) -> None:
        _check_twilio(settings)
        self._settings = settings
        # The SDK's aiohttp session needs a running loop, so it is made on the first send.
        self._client: Any = None

    async def send(self, to: str, body: str) -> str:
        sender = self._sender_params()
        try:
            # AsyncTwilioHttpClient keeps its `timeout` but never hands it to aiohttp (twilio
            # 9.13), so without this a silent Twilio would hold the request for ever.
            async with asyncio.timeout(self._settings.timeout_seconds):
                message = await self._twilio().messages.create_async(to=to, body=body, **sender)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _classify(exc) from exc
        except TimeoutError as exc:
            seconds = self._settings.timeout_seconds
            raise SmsUnavailable(f"twilio did not answer within {seconds:g} s") from exc
        except aiohttp.ClientError as exc:
            raise SmsUnavailable(f"twilio unreachable: {type(exc).__name__}") from exc
        return str(message.sid)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.http_client.close()
            self._client = None

    def _twilio(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        settings = self._settings
        http_client = _HeaderAuthHttpClient(timeout=settings.timeout_seconds)
        client = Client(settings.account_sid, str(settings.auth_token), http_client=http_client)
        # The SDK would rewrite the host from TWILIO_EDGE / TWILIO_REGION in the environment;
        # `api_base_url` is the one setting that says where Twilio is.
        client.edge = client.region = None
        client.api.base_url = settings.api_base_url
        return client

    def _sender_params(self) -> dict[str, str]:
        if self._settings.messaging_service_sid:
            return {"messaging_service_sid": self._settings.messaging_service_sid}
        return {"from_": self._settings.from_number}


def _check_twilio(settings: SmsSettings) -> None:
    for key in ("account_sid", "auth_token"):
        if not getattr(settings, key):
            raise ConfigError(f"Config 'sms.{key}' is missing, and the Twilio sender needs it.")
    if not (settings.from_number or settings.messaging_service_sid):
        raise ConfigError(
            "Config 'sms.from_number' or 'sms.messaging_service_sid' is missing, "
            "and the Twilio sender needs one."
        )


def _classify(exc: TwilioRestException | TwilioServiceException) -> SmsRejected | SmsUnavailable:
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
