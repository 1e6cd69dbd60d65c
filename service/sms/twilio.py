"""The Twilio sender: Messages API through the official SDK's asyncio client, one try a send.

The SDK itself (`service.sms.twilio_sdk`) is imported on the first send, in a thread, so the
loop goes on answering meanwhile and a restart does not wait for it before it listens.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from types import ModuleType
from typing import Any

import aiohttp

from service.config import SmsSettings
from service.errors import ConfigError, SmsUnavailable


class TwilioSender:
    """Sends through Twilio's Messages API with the official SDK's asyncio client."""

    def __init__(self, settings: SmsSettings) -> None:
        _check_twilio(settings)
        # Installed, at least: a missing SDK stops the start, not the first send.
        if importlib.util.find_spec("twilio") is None:
            raise ConfigError("The Twilio sender needs the twilio package: pip install twilio.")
        self._settings = settings
        self._sdk: asyncio.Task[ModuleType] | None = None
        # The SDK's aiohttp session needs a running loop, so it is made on the first send.
        self._client: Any = None

    async def send(self, to: str, body: str) -> str:
        sdk = await self._loaded()
        sender = self._sender_params()
        try:
            # AsyncTwilioHttpClient keeps its `timeout` but never hands it to aiohttp (twilio
            # 9.13), so without this a silent Twilio would hold the request for ever.
            async with asyncio.timeout(self._settings.timeout_seconds):
                message = await self._twilio(sdk).messages.create_async(to=to, body=body, **sender)
        except sdk.ERRORS as exc:
            raise sdk.classify(exc) from exc
        except TimeoutError as exc:
            seconds = self._settings.timeout_seconds
            raise SmsUnavailable(f"twilio did not answer within {seconds:g} s") from exc
        except aiohttp.ClientError as exc:
            raise SmsUnavailable(f"twilio unreachable: {type(exc).__name__}") from exc
        return str(message.sid)

    async def close(self) -> None:
        if self._sdk is not None and not self._sdk.done():
            self._sdk.cancel()
        if self._client is not None:
            await self._client.http_client.close()
            self._client = None

    async def _loaded(self) -> ModuleType:
        # One import for all the sends that come while it runs; shielded, so a send that gives
        # up (its time-out, a stop) does not cancel it under the others.
        sdk = self._sdk
        if sdk is None or (sdk.done() and (sdk.cancelled() or sdk.exception() is not None)):
            # The first send, or the import failed (or a close cut it short): import (again).
            sdk = self._sdk = asyncio.create_task(
                asyncio.to_thread(importlib.import_module, "service.sms.twilio_sdk")
            )
        elif sdk.done():
            return sdk.result()  # every send after the first
        return await asyncio.shield(sdk)

    def _twilio(self, sdk: ModuleType) -> Any:
        if self._client is None:
            self._client = sdk.make_client(self._settings)
        return self._client

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
