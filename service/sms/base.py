"""Delivering the challenge by SMS: the sender interface, and the choice of sender.

Every sender raises `SmsRejected` when the provider refuses the message for good (an invalid or
unreachable number) and `SmsUnavailable` when trying again later may work (5xx, 429, time-out,
connection error). A sender makes one try: retrying is the challenge's business
(`service.sms.challenge`). Twilio (`service.sms.twilio`) in production, the console
(`service.sms.console`) in development.
"""

from __future__ import annotations

import logging
from typing import Protocol

from service.config import SmsSettings
from service.errors import ConfigError
from service.sms.console import ConsoleSender
from service.sms.twilio import TwilioSender

logger = logging.getLogger(__name__)


class SmsSender(Protocol):
    @property
    def ready(self) -> bool:
        """Whether it can send at once (what it needs is loaded)."""
        ...

    async def open(self) -> None:
        """Load what sending needs, beside the start-up; `SmsUnavailable` if it cannot."""
        ...

    async def send(self, to: str, body: str) -> str:
        """Send `body` to `to` and return the provider's message id."""
        ...

    async def close(self) -> None: ...


def create_sender(settings: SmsSettings, *, has_api_keys: bool) -> SmsSender:
    """The sender `settings.sender` names; the console only when asked for, or in development.

    API keys mean real callers, so production: there "auto" without Twilio's credentials is
    refused, where it used to print every code to a console that no one reads.
    """
    if _wants_twilio(settings, has_api_keys):
        return TwilioSender(settings)
    logger.warning(
        "SMS ARE NOT SENT: the console sender prints every code to stdout (the logs, on stderr,"
        ' never show one); set sms.sender = "twilio" and its credentials to send SMS'
    )
    return ConsoleSender()


def _wants_twilio(settings: SmsSettings, has_api_keys: bool) -> bool:
    if settings.sender != "auto":
        return settings.sender == "twilio"
    has_sid, has_token = bool(settings.account_sid), bool(settings.auth_token)
    if has_sid != has_token:
        # Half a credential is a mistake; falling back to the console would print codes to stdout.
        missing = "sms.auth_token" if has_sid else "sms.account_sid"
        raise ConfigError(f"Config '{missing}' is missing, and the other Twilio credential is set.")
    if not has_sid and has_api_keys:
        raise ConfigError(
            "Config 'sms.account_sid' and 'sms.auth_token' (or TWILIO_ACCOUNT_SID and"
            " TWILIO_AUTH_TOKEN) are missing, and API keys are set: set them to send SMS, or set"
            ' sms.sender = "console" to print the codes to stdout on purpose.'
        )
    return has_sid
