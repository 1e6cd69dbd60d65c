"""What this surface shows: a verification as an orchestration instance, and the URLs to it."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from service.models import Status, Verification

#: The platform's built-in HTTP API, Functions 2.x and later.
WEBHOOK = "/runtime/webhooks/durabletask"
#: The lab's orchestrator function: every instance here is one of it.
ORCHESTRATOR = "E4_SmsPhoneVerification"
#: The lab's external event carrying the code.
CHALLENGE_EVENT = "SmsChallengeResponse"
#: What the URLs name when the request named no task hub or connection: the lab's defaults.
TASK_HUB = "DurableFunctionsHub"
CONNECTION = "Storage"


class RuntimeStatus(StrEnum):
    """The platform's runtime statuses this service's statuses map onto."""

    #: Waiting for the code (the platform's Pending, scheduled but not begun, never shows).
    RUNNING = "Running"
    #: Decided: approved (output true), expired or max_attempts_reached (output false).
    COMPLETED = "Completed"
    #: Canceled through terminate, or DELETE /verifications/{id}.
    TERMINATED = "Terminated"
    #: The SMS could not be sent; the output is why.
    FAILED = "Failed"


RUNTIME_STATUSES = {
    Status.PENDING: RuntimeStatus.RUNNING,
    Status.APPROVED: RuntimeStatus.COMPLETED,
    Status.EXPIRED: RuntimeStatus.COMPLETED,
    Status.MAX_ATTEMPTS_REACHED: RuntimeStatus.COMPLETED,
    Status.CANCELED: RuntimeStatus.TERMINATED,
    Status.FAILED: RuntimeStatus.FAILED,
}


def instance(v: Verification, *, show_input: bool = True) -> dict[str, Any]:
    """The instance's status, as `GET /instances/{instanceId}` shows it; never the code."""
    return {
        "name": ORCHESTRATOR,
        "instanceId": v.id,
        "runtimeStatus": RUNTIME_STATUSES[v.status].value,
        # The number as stored: its E.164 form, masked once retention redacts it.
        "input": v.phone if show_input else None,
        "customStatus": None,
        "output": _output(v),
        "createdTime": _time(v.created_at),
        "lastUpdatedTime": _time(_last_updated(v)),
    }


def links(base: str, instance_id: str, query: str) -> dict[str, str]:
    """An instance's management URLs, in the platform's templates (`CreateCheckStatusResponse`).

    `base` is the scheme and host the request came to; `query` is from `query_suffix`.
    """
    prefix = f"{base}{WEBHOOK}/instances/{quote(instance_id, safe='')}"
    return {
        "id": instance_id,
        "statusQueryGetUri": f"{prefix}?{query}",
        "sendEventPostUri": f"{prefix}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{prefix}/terminate?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{prefix}?{query}",
        "restartPostUri": f"{prefix}/restart?{query}",
        "suspendPostUri": f"{prefix}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{prefix}/resume?reason={{text}}&{query}",
    }


def query_suffix(task_hub: str | None, connection: str | None, key: str | None) -> str:
    """`taskHub=...&connection=...&code=...`: the request's, else the defaults; no key, no code."""
    suffix = f"taskHub={quote(task_hub or TASK_HUB, safe='')}"
    suffix += f"&connection={quote(connection or CONNECTION, safe='')}"
    if key:
        suffix += f"&code={quote(key, safe='')}"
    return suffix


def _output(v: Verification) -> bool | str | None:
    if v.status is Status.APPROVED:
        return True
    if v.status in (Status.EXPIRED, Status.MAX_ATTEMPTS_REACHED):
        return False
    if v.status is Status.FAILED:
        return v.reason
    return None  # running, or terminated: no reason is kept for a cancel


def _last_updated(v: Verification) -> float:
    if v.completed_at is not None:
        return v.completed_at
    return max(v.created_at, v.sms_sent_at or v.created_at)


def _time(timestamp: float) -> str:
    # .NET's "s" format and a Z, as the platform writes them: whole seconds, UTC.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
