"""Thin views: the platform's commands mapped onto the orchestrator's.

start -> `start`, raiseEvent SmsChallengeResponse -> `submit_code`, terminate -> `cancel`,
status -> `get`, restart -> `start` again for the same number. They run in this surface's
sub-applications: the app's objects are reached through `request.config_dict`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from service import validation
from service.api.durable import render
from service.api.durable.auth import offered_key
from service.api.durable.errors import Refusal
from service.api.keys import orchestrator_key, settings_key
from service.api.v1.auth import api_key_id
from service.errors import BadRequest, NotPending, PayloadTooLarge, Unprocessable
from service.models import Status, Verification

JSON = "application/json"
PHONE_BODY = 'the phone number, as a JSON string such as "+14155550100"'


async def start(request: web.Request) -> web.Response:
    """Start the lab's orchestration: the body is its input, the phone number."""
    name = request.match_info["functionName"]
    if name.casefold() != render.ORCHESTRATOR.casefold():
        raise BadRequest(
            f"The function '{name}' doesn't exist: this service runs {render.ORCHESTRATOR}.",
            code="unknown_function",
        )
    body = await _json(request, f"The body must be {PHONE_BODY}.")
    if not isinstance(body, str):
        raise BadRequest(f"The body must be {PHONE_BODY}.", code="invalid_type")
    phone = validation.phone_number(body)
    owner = request[api_key_id]
    # An instance id the caller chooses starts one verification however often it is sent.
    chosen = request.match_info.get("instanceId")
    key = f"{owner}:durable:{validation.idempotency_key(chosen)}" if chosen else None
    orchestrator = request.config_dict[orchestrator_key]
    started = await orchestrator.start(phone, None, owner=owner, idempotency_key=key)
    return _check_status(request, started.verification.id)


async def status(request: web.Request) -> web.Response:
    """202 with Location and Retry-After while it runs, 200 once decided (500 on request)."""
    v = await _instance(request)
    body = render.instance(v, show_input=_flag(request, "showInput", default=True))
    if v.pending:
        return _answer(body, 202, {"Location": str(request.url), "Retry-After": "5"})
    if v.status is Status.FAILED and _flag(request, "returnInternalServerErrorOnFailure"):
        return _answer(body, 500)
    return _answer(body, 200)


async def raise_event(request: web.Request) -> web.Response:
    """202 with no body, whatever the code: raiseEvent never tells the verdict; the status does.

    An event other than `SmsChallengeResponse` is accepted and ignored, as the platform accepts
    an event no orchestrator waits for.
    """
    v = await _instance(request)  # the platform's order: 404 and 410 before the body is read
    if not v.pending:
        raise NotPending(v)
    if request.content_type != JSON:
        raise BadRequest("Only application/json request content is supported", code="not_json")
    data = await _json(request, "Invalid JSON content")
    if request.match_info["eventName"].casefold() != render.CHALLENGE_EVENT.casefold():
        return web.Response(status=202)
    code = _code(data, request.config_dict[settings_key].verification.code_length)
    orchestrator = request.config_dict[orchestrator_key]
    await orchestrator.submit_code(v.id, code, owner=request[api_key_id])
    return web.Response(status=202)


async def terminate(request: web.Request) -> web.Response:
    """Cancel; `reason` is not kept."""
    orchestrator = request.config_dict[orchestrator_key]
    await orchestrator.cancel(request.match_info["instanceId"], owner=request[api_key_id])
    return web.Response(status=202)


async def restart(request: web.Request) -> web.Response:
    """A new verification for the same number (and reference), answered as a start is."""
    v = await _instance(request)
    if not _flag(request, "restartWithNewInstanceId", default=True):
        raise Refusal(
            501,
            "Restarting under the same instance ID is not supported: a verification's id is"
            " its own for life; a restart is a new one.",
        )
    try:
        phone = validation.phone_number(v.phone)
    except Unprocessable:
        raise Refusal(
            410, f"Instance '{v.id}' cannot be restarted: retention has masked its number."
        ) from None
    orchestrator = request.config_dict[orchestrator_key]
    started = await orchestrator.start(phone, v.reference, owner=request[api_key_id])
    return _check_status(request, started.verification.id)


async def purge(request: web.Request) -> web.Response:
    """Refused: the store deletes finished verifications by age only (retention)."""
    v = await _instance(request)
    if v.pending:
        raise Refusal(
            412,
            "Only orchestrations in a terminal state can be purged, but the orchestration with"
            f" instance ID {v.id} has status {render.RuntimeStatus.RUNNING.value}.",
        )
    keep = request.config_dict[settings_key].retention.keep_finished_seconds
    raise Refusal(
        501,
        "Purging is not supported: a finished verification is deleted"
        f" {keep:g} seconds after it ends (retention.keep_finished_seconds).",
    )


#: What each operation the platform has and this surface lacks answers, once the instance is found.
UNSUPPORTED = {
    "suspend": "Suspending is not supported: a verification's deadline runs on; terminate it.",
    "resume": "Resuming is not supported: an instance is never suspended here.",
    "rewind": "Rewinding is not supported: restart the instance instead.",
}


def unsupported(operation: str) -> Handler:
    """404 for an unknown instance, 410 for a finished one (rewind aside), else 501."""
    text = UNSUPPORTED[operation]

    async def refuse(request: web.Request) -> web.StreamResponse:
        v = await _instance(request)
        if not v.pending and operation != "rewind":
            raise NotPending(v)
        raise Refusal(501, text)

    return refuse


async def list_instances(request: web.Request) -> web.Response:
    raise Refusal(501, "Listing instances is not supported: ask for each by its id.")


async def purge_instances(request: web.Request) -> web.Response:
    raise Refusal(501, "Purging instances by filter is not supported: retention deletes them.")


def _check_status(request: web.Request, instance_id: str) -> web.Response:
    """The platform's answer to a start: 202, Location, Retry-After: 10 and the management URLs."""
    query = render.query_suffix(
        _query(request, "taskHub"), _query(request, "connection"), request[offered_key]
    )
    payload = render.links(str(request.url.origin()), instance_id, query)
    headers = {"Location": payload["statusQueryGetUri"], "Retry-After": "10"}
    return _answer(payload, 202, headers)


async def _instance(request: web.Request) -> Verification:
    orchestrator = request.config_dict[orchestrator_key]
    return await orchestrator.get(request.match_info["instanceId"], owner=request[api_key_id])


def _answer(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type=JSON, charset="utf-8"
    )


async def _json(request: web.Request, refusal: str) -> Any:
    """The body as JSON, whatever its Content-Type (the platform's start does not look)."""
    limit = request.config_dict[settings_key].server.max_body_bytes
    # Refuse on the declared length before reading; aiohttp enforces the same limit while reading.
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body must be at most {limit} bytes.")
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest(refusal, code="malformed_json") from None


def _code(data: Any, length: int) -> str:
    """The code from the event's data: a JSON string as it is, a number padded to `length`.

    The lab's code is a number, and a number loses its leading zeros: 012345 arrives as 12345.
    """
    if isinstance(data, bool) or not isinstance(data, int | str):
        raise BadRequest(
            f"The {render.CHALLENGE_EVENT} data must be the code, a JSON number or string.",
            code="invalid_type",
        )
    if isinstance(data, int):
        if not 0 <= data < 10**length:
            raise Unprocessable(f"The code must be {length} digits.", code="invalid_code")
        data = f"{data:0{length}d}"
    return validation.code(data, length)


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    # As .NET's bool.TryParse reads it: true or false in any case; anything else is the default.
    raw = request.query.get(name, "").strip().lower()
    return {"true": True, "false": False}.get(raw, default)


def _query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value or None
