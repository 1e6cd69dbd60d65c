"""Thin views: parse the request, call the orchestrator, answer with the verification's view.

They run in the v1 sub-application: the app's objects are reached through `request.config_dict`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web

from service import validation
from service.api.keys import orchestrator_key, settings_key
from service.api.v1 import render
from service.api.v1.auth import api_key_id
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.models import Verification

JSON = "application/json"


async def start(request: web.Request) -> web.Response:
    settings = request.config_dict[settings_key].verification
    body = await _json_object(request, allowed={"phone", "reference"})
    phone = validation.phone_number(_required(body, "phone"))
    reference = validation.reference(body.get("reference"), settings.max_reference_length)
    key = validation.idempotency_key(request.headers.get("Idempotency-Key"))
    scoped_key = f"{request[api_key_id]}:{key}" if key is not None else None
    orchestrator = request.config_dict[orchestrator_key]
    started = await orchestrator.start(
        phone, reference, owner=request[api_key_id], idempotency_key=scoped_key
    )
    v = started.verification
    headers = {"Location": f"/verifications/{v.id}"}
    if not started.created:
        headers["Idempotent-Replayed"] = "true" if started.replayed else "false"
    return _view(v, status=202, headers=headers)


async def submit_code(request: web.Request) -> web.Response:
    body = await _json_object(request, allowed={"code"})
    code = validation.code(_required(body, "code"))
    orchestrator = request.config_dict[orchestrator_key]
    v = await orchestrator.submit_code(
        request.match_info["id"], code, owner=request[api_key_id], exact_length=True
    )
    return _view(v)


async def get(request: web.Request) -> web.Response:
    orchestrator = request.config_dict[orchestrator_key]
    return _view(await orchestrator.get(request.match_info["id"], owner=request[api_key_id]))


async def cancel(request: web.Request) -> web.Response:
    orchestrator = request.config_dict[orchestrator_key]
    return _view(await orchestrator.cancel(request.match_info["id"], owner=request[api_key_id]))


def _view(
    v: Verification, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # orjson: every answer of the hot path is one of these, and it is ten times json.dumps's speed.
    # The view holds only validated strings, so there is nothing (lone surrogates) it refuses.
    body = orjson.dumps(render.view(v))
    return web.Response(
        body=body, status=status, headers=headers, content_type=JSON, charset="utf-8"
    )


async def _json_object(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    limit = request.config_dict[settings_key].server.max_body_bytes
    # Refuse on the declared length before reading; aiohttp enforces the same limit while reading.
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body must be at most {limit} bytes.")
    if request.content_type != "application/json":
        raise UnsupportedMediaType("The body must be JSON: Content-Type: application/json.")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("The body is not valid JSON.", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.", code="not_an_object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}.", code="unknown_field")
    return body


def _required(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise BadRequest(f"'{name}' is required.", code="missing_field")
    return body[name]
