"""The Twilio sender: Messages API through the official SDK's asyncio client, one try a send.

The SDK itself (`service.sms.twilio_sdk`) is imported in a thread, beside the start-up (`open`)
or by the first send, so the loop goes on answering meanwhile and a restart does not wait for it
before it listens.
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

    @property
    def ready(self) -> bool:
        """Whether the SDK is loaded: until then a send waits for it (or fails, if it cannot)."""
        sdk = self._sdk
        return sdk is not None and sdk.done() and not sdk.cancelled() and sdk.exception() is None

    async def open(self) -> None:
        """Load the SDK now, in a thread; `SmsUnavailable` if it cannot be (a broken install)."""
        await self._loaded()

    async def send(self, to: str, body: str) -> str:
        seconds = self._settings.timeout_seconds
        try:
            # The first send's wait for the SDK counts against its time too. The SDK's own
            # `timeout` is kept but never handed to aiohttp (twilio 9.13), so without this a
            # silent Twilio would hold the request for ever.
            async with asyncio.timeout(seconds):
                return await self._create(await self._loaded(), to, body)
        except TimeoutError as exc:
            raise SmsUnavailable(f"twilio did not answer within {seconds:g} s") from exc

    async def close(self) -> None:
        # An import under way is left to finish (a thread cannot be stopped): cancelling it
        # would cancel every send waiting on it with it.
        if self._client is not None:
            await self._client.http_client.close()
            self._client = None

    async def _create(self, sdk: ModuleType, to: str, body: str) -> str:
        try:
            message = await self._twilio(sdk).messages.create_async(
                to=to, body=body, **self._sender_params()
            )
        except sdk.ERRORS as exc:
            raise sdk.classify(exc) from exc
        except aiohttp.ClientError as exc:
            raise SmsUnavailable(f"twilio unreachable: {type(exc).__name__}") from exc
        return str(message.sid)

    async def _loaded(self) -> ModuleType:
        sdk = self._sdk
        if sdk is not None and self.ready:
            return sdk.result()  # every send after the first
        if sdk is None or sdk.done():
            # The first send, or the import failed: (again) in a thread, one for all the sends
            # that come meanwhile.
            sdk = self._sdk = asyncio.create_task(
                asyncio.to_thread(importlib.import_module, "service.sms.twilio_sdk")
            )
        try:
            # Shielded: a send that gives up (its time-out) leaves the import to the others.
            return await asyncio.shield(sdk)
        except Exception as exc:
            raise SmsUnavailable(f"the twilio SDK could not be loaded: {exc!r}") from exc

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
