"""The SMS challenge: the activity that sends a verification's code, with its retry policy.

Like a durable-execution activity, it belongs to the workflow that runs it: the orchestrator
decides what a failure means (only the first send can end a verification `failed`). This module
decides how a send is tried: transient failures are retried with the delays kept in a list (as
tutorcruncher/morpheus does), no try starts after the deadline, every try after the first is
charged to the limits like any other SMS, and a semaphore paces how many are in flight at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping

from service.codes import CodeBook
from service.config import SmsSettings
from service.errors import ConfigError, SmsError, SmsRejected, SmsUnavailable
from service.limits import Limits
from service.models import Clock, Verification
from service.observers import IGNORED, Observer
from service.sms.base import SmsSender

log = logging.getLogger(__name__)


class Challenges:
    """Sends challenges through `sender`; `observer` is told of each sent and failed (metrics)."""

    def __init__(
        self,
        sender: SmsSender,
        codes: CodeBook,
        limits: Limits,
        settings: SmsSettings,
        clock: Clock = time.time,
        observer: Observer = IGNORED,
        templates: Mapping[str, str] | None = None,
    ) -> None:
        """`templates`: by a verification's `service`, the template its SMS is written with
        instead of `settings.template` (a Twilio Verify Service's own).
        """
        self._templates = dict(templates or {})
        for template in (settings.template, *self._templates.values()):
            check_template(template)
        if settings.max_concurrent_sends < 1:
            raise ConfigError("Config 'sms.max_concurrent_sends' must be positive.")
        self._sender = sender
        self._codes = codes
        self._limits = limits
        self._template = settings.template
        self._delays = settings.retry_delays
        self._clock = clock
        self._in_flight = asyncio.Semaphore(settings.max_concurrent_sends)
        self._observer = observer

    async def send(
        self, v: Verification, *, charged: bool, ready: Callable[[], Awaitable[None]] | None = None
    ) -> str:
        """Send `v`'s code and return the provider's message id, or raise `SmsError`.

        `charged` says whether the first try was already counted against the limits (a start
        is; a resend after a restart is not). `ready`, if given, is awaited right before each
        try goes out (once a place among the sends in flight is had): the replica's lease.
        """
        last: SmsUnavailable | None = None
        for attempt in range(len(self._delays) + 1):
            if attempt > 0:
                await asyncio.sleep(min(self._delays[attempt - 1], self._left(v)))
            if (attempt > 0 or not charged) and not await self._limits.charge(v.phone):
                raise self._failed(SmsRejected("the SMS limit for this number is reached"))
            try:
                return await self._try(v, ready)
            except SmsUnavailable as exc:
                last = exc
                log.warning(
                    "SMS try %d failed (%s)",
                    attempt + 1,
                    exc.reason,
                    extra={"verification_id": v.id},
                )
            except SmsError as exc:
                raise self._failed(exc) from None
        assert last is not None
        tries = len(self._delays) + 1
        raise self._failed(SmsUnavailable(f"{last.reason} (gave up after {tries} tries)"))

    async def _try(self, v: Verification, ready: Callable[[], Awaitable[None]] | None) -> str:
        async with self._in_flight:
            if ready is not None:
                await ready()
            # Checked once a place is had: waiting for one may have taken the time that was left.
            left = self._left(v)
            if left <= 0:
                raise SmsRejected("the verification expired before its SMS could be sent")
            template = self._templates.get(v.service, self._template)
            code = self._codes.code(v.salt, v.code_length)
            body = template.format(code=code, expires_in=duration(left))
            sms_id = await self._sender.send(v.phone, body)
        self._observer.sms_sent()
        return sms_id

    def _left(self, v: Verification) -> float:
        return max(0.0, v.expires_at - self._clock())

    def _failed(self, exc: SmsError) -> SmsError:
        self._observer.sms_failed()
        return exc


def check_template(template: str) -> None:
    """Refuse, at start-up, a template that cannot be filled in or would not show the code."""
    try:
        text = template.format(code="0", expires_in="1 minute")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"Config 'sms.template' may use only {{code}} and {{expires_in}}: {exc!r}."
        ) from None
    if "0" not in text or "{code}" not in template:
        raise ConfigError("Config 'sms.template' must contain {code}.")


def duration(seconds: float) -> str:
    """The time left as people say it, rounded down so that it never promises too much."""
    whole = max(1, math.floor(seconds))
    if whole >= 120:
        minutes = whole // 60
        return f"{minutes} minutes"
    if whole % 60 == 0:
        return "1 minute"
    return f"{whole} second" + ("s" if whole != 1 else "")
