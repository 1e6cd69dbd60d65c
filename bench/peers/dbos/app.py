"""The HTTP side: the part of our `/verifications` contract the benchmark driver uses, on aiohttp.

    POST   /verifications             start the workflow (its id is the verification's): 202
    POST   /verifications/{id}/code   `DBOS.send` the code, `DBOS.get_event` the verdict: 200/409
    GET    /verifications/{id}        the view: the workflow's output, or its latest view
    DELETE /verifications/{id}        `DBOS.send` a cancel, `DBOS.get_event` the verdict
    GET    /healthz                   200

The same validation as ours (service/validation.py), the same JSON and the same statuses.
Left out: idempotency keys, resends for a number already pending, limits, tenancy, /metrics.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import uuid
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from dbos import DBOS, SetWorkflowID

from bench.peers.dbos.workflow import CODE_TOPIC, VIEW_EVENT, Command, Started, Verifications, view
from service import validation
from service.api.v1.errors import status_of
from service.errors import BadRequest, NotFound, Unauthorized, Unavailable, VerificationError
from service.models import Status

verifications_key = web.AppKey("verifications", Verifications)
#: Beyond the deadline, how long a code handler waits for a verdict before reading the outcome.
VERDICT_GRACE_SECONDS = 5.0


def create_app(verifications: Verifications) -> web.Application:
    app = web.Application(middlewares=[errors, authenticate])
    app[verifications_key] = verifications
    app.router.add_post("/verifications", start)
    app.router.add_post("/verifications/{id}/code", submit_code)
    app.router.add_get("/verifications/{id}", get)
    app.router.add_delete("/verifications/{id}", cancel)
    app.router.add_get("/healthz", healthz)
    return app


async def start(request: web.Request) -> web.Response:
    settings = request.app[verifications_key].settings.verification
    body = await _json_object(request)
    phone = validation.phone_number(body.get("phone"))
    reference = validation.reference(body.get("reference"), settings.max_reference_length)
    now = time.time()
    v = Started(
        id="VE" + uuid.uuid4().hex,
        to=phone,
        reference=reference,
        code=f"{secrets.randbelow(10**settings.code_length):0{settings.code_length}d}",
        max_attempts=settings.max_attempts,
        created_at=now,
        expires_at=now + settings.ttl_seconds,
    )
    with SetWorkflowID(v.id):
        await DBOS.start_workflow_async(request.app[verifications_key].verify, v)
    headers = {"Location": f"/verifications/{v.id}"}
    return _json(view(v, Status.PENDING, 0), status=202, headers=headers)


async def submit_code(request: web.Request) -> web.Response:
    settings = request.app[verifications_key].settings.verification
    body = await _json_object(request)
    code = validation.code(body.get("code"), settings.code_length)
    return await _command(request.match_info["id"], code)


async def cancel(request: web.Request) -> web.Response:
    return await _command(request.match_info["id"], None)


async def get(request: web.Request) -> web.Response:
    verification_id = request.match_info["id"]
    status = await DBOS.get_workflow_status_async(verification_id)
    if status is None:
        raise NotFound(f"Verification '{verification_id}' does not exist.")
    if status.status != "PENDING":
        if not isinstance(status.output, dict):
            raise Unavailable("The verification's workflow failed; see the peer's log.")
        return _json(status.output)
    latest = await DBOS.get_event_async(verification_id, VIEW_EVENT, timeout_seconds=0)
    return _json(latest or view(_input(status), Status.PENDING, 0))


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _command(verification_id: str, code: str | None) -> web.Response:
    """Send a code (or a cancel, `code` None) to the workflow and answer with its verdict."""
    status = await DBOS.get_workflow_status_async(verification_id)
    if status is None:
        raise NotFound(f"Verification '{verification_id}' does not exist.")
    if status.status != "PENDING":
        return _not_pending(status.output)
    v = _input(status)
    command = Command(request=uuid.uuid4().hex, at=time.time(), code=code)
    await DBOS.send_async(verification_id, command, CODE_TOPIC)
    wait = max(0.0, v.expires_at - time.time()) + VERDICT_GRACE_SECONDS
    answer = await DBOS.get_event_async(verification_id, command.request, timeout_seconds=wait)
    if answer is None:
        # Decided without this command (the deadline, or another command first).
        final = await DBOS.get_result_async(verification_id)
        return _not_pending(final)
    if answer["status"] == 409:
        return _not_pending(answer["view"])
    return _json(answer["view"])


def _input(status: Any) -> Started:
    arguments = status.input["args"]
    started = arguments[-1]
    assert isinstance(started, Started), arguments
    return started


def _not_pending(final: Any) -> web.Response:
    if not isinstance(final, dict):
        # The workflow ended in error (its outcome outlasted the publish step's retries).
        raise Unavailable("The verification's workflow failed; see the peer's log.")
    message = f"Verification '{final['id']}' is {final['status']}."
    return _json(
        {"error": {"code": "not_pending", "message": message}, "verification": final}, status=409
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise BadRequest("The body is not valid JSON.", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.", code="not_an_object")
    return body


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VerificationError as exc:
        body = {"error": {"code": exc.code, "message": exc.message}}
        return _json(body, status=status_of(exc))


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/verifications"):
        auth = request.app[verifications_key].settings.auth
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        known = any(hmac.compare_digest(given, key.encode()) for key in auth.api_keys)
        if not known and not auth.allow_unauthenticated:
            raise Unauthorized("A valid API key is required: Authorization: Bearer <key>.")
    return await handler(request)
