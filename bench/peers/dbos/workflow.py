"""One DBOS workflow per verification: send the SMS, `DBOS.recv` codes until the deadline, decide,
answer through `DBOS.set_event`, publish the outcome to SQS.

Written in DBOS's idioms: a `DBOSConfiguredInstance` holds what the steps need (so a recovered
workflow finds it by name), every side effect is a `@DBOS.step` with DBOS's own retry policy, and
the workflow body is deterministic: the times it decides with come from its inputs, from the
messages it receives, or from its steps, all checkpointed, so a replay decides the same.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from dbos import DBOS, DBOSConfiguredInstance

from notifier.events import SIGNATURE_ATTRIBUTE, outcome_body, sign
from notifier.queues import SqsClient, is_transient, sqs_client
from service.config import Settings
from service.errors import SmsRejected, SmsUnavailable
from service.models import Status, rfc3339
from service.sms.challenge import duration
from service.sms.twilio import TwilioSender

#: The topic codes (and cancels) are sent on.
CODE_TOPIC = "code"
#: The event holding the view after a wrong code; before one, the view is the workflow's input.
VIEW_EVENT = "view"


@dataclass(frozen=True, slots=True)
class Started:
    """The workflow's input, checkpointed by DBOS before `start_workflow_async` returns."""

    id: str
    to: str
    reference: str | None
    #: Drawn by the start handler and kept in the input, so a recovered workflow resends the
    #: same code. (Our service keeps a salt and derives the code from a secret instead.)
    code: str
    max_attempts: int
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Command:
    """What the code and cancel handlers send on `CODE_TOPIC`."""

    #: The event the handler waits on for the answer.
    request: str
    #: When the handler sent it: the decision's time, identical on replay.
    at: float
    #: None for a cancel.
    code: str | None = None


def view(
    v: Started,
    status: Status,
    attempts: int,
    completed_at: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The verification as our API shows it (service/api/v1/render.py)."""
    return {
        "id": v.id,
        "status": status.value,
        "to": v.to,
        "reference": v.reference,
        "attempts_left": max(0, v.max_attempts - attempts),
        "created_at": rfc3339(v.created_at),
        "expires_at": rfc3339(v.expires_at),
        "completed_at": rfc3339(completed_at) if completed_at is not None else None,
        "reason": reason,
    }


@DBOS.dbos_class()
class Verifications(DBOSConfiguredInstance):
    """The workflow and its steps, with the Twilio and SQS clients of each event loop.

    Workflows started by a request run on the server's loop; those DBOS recovers at launch run on
    its own background loop. An aiohttp session belongs to one loop, hence a client per loop.
    """

    def __init__(self, settings: Settings, queue_url: str = "") -> None:
        super().__init__(config_name="verifications")
        self.settings = settings
        self.queue_url = queue_url
        self._senders: dict[asyncio.AbstractEventLoop, TwilioSender] = {}
        self._queues: dict[asyncio.AbstractEventLoop, SqsClient] = {}
        self._stacks: dict[asyncio.AbstractEventLoop, AsyncExitStack] = {}

    @DBOS.workflow()
    async def verify(self, v: Started) -> dict[str, Any]:
        """The whole verification; returns its final view, which is the workflow's output."""
        try:
            refused = await self.send_sms(v)
        except Exception as exc:  # the transient failures outlasted the step's retries
            refused = f"sms unavailable: {exc}"
        if refused is not None:
            return await self._finish(v, Status.FAILED, 0, v.created_at, None, refused)
        attempts = 0
        while True:
            # The deadline is the input's; DBOS also records the end of each recv's wait, so a
            # recovered workflow waits only what was left.
            left = max(0.0, v.expires_at - time.time())
            command: Command | None = await DBOS.recv_async(CODE_TOPIC, timeout_seconds=left)
            if command is None:
                return await self._finish(v, Status.EXPIRED, attempts, v.expires_at)
            if command.at >= v.expires_at:
                return await self._finish(v, Status.EXPIRED, attempts, v.expires_at, command)
            if command.code is None:
                return await self._finish(v, Status.CANCELED, attempts, command.at, command)
            attempts += 1
            if hmac.compare_digest(command.code, v.code):
                return await self._finish(v, Status.APPROVED, attempts, command.at, command)
            if attempts >= v.max_attempts:
                status = Status.MAX_ATTEMPTS_REACHED
                return await self._finish(v, status, attempts, command.at, command)
            pending = view(v, Status.PENDING, attempts)
            await DBOS.set_event_async(VIEW_EVENT, pending)
            await DBOS.set_event_async(command.request, {"status": 200, "view": pending})

    async def _finish(
        self,
        v: Started,
        status: Status,
        attempts: int,
        at: float,
        command: Command | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        final = view(v, status, attempts, at, reason)
        if command is not None:
            # A code that came after the deadline gets the final view with 409, as ours answers.
            late = status is Status.EXPIRED
            answer = {"status": 409 if late else 200, "view": final}
            await DBOS.set_event_async(command.request, answer)
        await self.publish(final, attempts)
        return final

    @DBOS.step(
        retries_allowed=True,
        # Our service's sms.retry_delays, [0.5, 1, 2, 4]: five tries in all.
        interval_seconds=0.5,
        backoff_rate=2.0,
        max_attempts=5,
        should_retry=lambda exc: isinstance(exc, SmsUnavailable),
    )
    async def send_sms(self, v: Started) -> str | None:
        """Send the code; returns Twilio's reason if it refused for good, None once sent."""
        template = self.settings.sms.template
        body = template.format(code=v.code, expires_in=duration(v.expires_at - time.time()))
        try:
            await self._sender().send(v.to, body)
        except SmsRejected as exc:
            return str(exc)
        return None

    @DBOS.step(
        retries_allowed=True,
        # Our publisher tries for ever through queue.retry_delays; a DBOS step gives up, so
        # many tries, and the workflow then fails (DBOS records the error).
        interval_seconds=0.2,
        backoff_rate=2.0,
        max_attempts=12,
        should_retry=is_transient,
    )
    async def publish(self, final: dict[str, Any], attempts: int) -> None:
        """Send the outcome event, the body our service sends (notifier/events.py)."""
        body = outcome_body(
            id=final["id"],
            status=final["status"],
            to=final["to"],
            reference=final["reference"],
            attempts=attempts,
            created_at=final["created_at"],
            completed_at=final["completed_at"],
            reason=final["reason"],
        )
        attributes = {"status": {"DataType": "String", "StringValue": final["status"]}}
        key = self.settings.queue.signing_key
        if key:
            attributes[SIGNATURE_ATTRIBUTE] = {"DataType": "String", "StringValue": sign(key, body)}
        sqs = await self._queue()
        await sqs.send_message(
            QueueUrl=self.queue_url, MessageBody=body, MessageAttributes=attributes
        )

    def _sender(self) -> TwilioSender:
        loop = asyncio.get_running_loop()
        if loop not in self._senders:
            # The same sender as our service's: the twilio SDK's asyncio client, one try a call.
            self._senders[loop] = TwilioSender(self.settings.sms)
        return self._senders[loop]

    async def _queue(self) -> SqsClient:
        loop = asyncio.get_running_loop()
        if loop not in self._queues:
            stack = self._stacks[loop] = AsyncExitStack()
            self._queues[loop] = await stack.enter_async_context(sqs_client(self.settings.queue))
        return self._queues[loop]

    async def close(self) -> None:
        """Close the clients of the running loop (the background loop's go with the process)."""
        loop = asyncio.get_running_loop()
        sender = self._senders.pop(loop, None)
        if sender is not None:
            await sender.close()
        self._queues.pop(loop, None)
        stack = self._stacks.pop(loop, None)
        if stack is not None:
            await stack.aclose()
