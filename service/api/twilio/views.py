"""Thin views: parse Twilio's form, call the orchestrator, answer in Twilio's JSON.

They run in the Twilio sub-application: the app's objects are reached through `config_dict`,
the caller's through `auth`'s request keys. A verification is named by its SID or, as the SDK
lets clients do, by its E.164 number (in the path unencoded, `/Verifications/+1415...`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from service import validation
from service.api.keys import (
    codes_key,
    numbers_key,
    orchestrator_key,
    settings_key,
    store_key,
)
from service.api.twilio import render
from service.api.twilio.auth import account_key, owner_key
from service.errors import BadRequest, NotFound, NotPending, Unprocessable
from service.models import Verification

#: Twilio's bounds on a code, whatever the Service's length: outside them the request is refused;
#: inside them a code of another form is a wrong code, and spends an attempt, as on Twilio.
CODE_LENGTHS = range(4, 11)
#: Twilio's page sizes.
PAGE_SIZES = range(1, 1001)


@dataclass(slots=True)
class ServiceDates:
    """When the Service was first served, agreed by every replica on the database, once."""

    created_at: float | None = None


service_dates_key = web.AppKey("service_dates", ServiceDates)


# -- services -------------------------------------------------------------------------------------


async def list_services(request: web.Request) -> web.Response:
    raw = request.query.get("PageSize", "50")
    size = int(raw) if raw.isdigit() and int(raw) in PAGE_SIZES else 50
    page = render.service_page([await _service(request)], _context(request), size)
    return _json(page)


async def create_service(request: web.Request) -> web.Response:
    """Services are configured, not made: a create naming the configured one answers it."""
    form = await request.post()
    settings = request.config_dict[settings_key]
    name = _required(form, "FriendlyName")
    length = form.get("CodeLength")
    if name != settings.verify_v2.friendly_name or (
        length is not None and length != str(settings.verification.code_length)
    ):
        raise BadRequest(
            "Services are configured, not created: [verify_v2] in config.toml names one"
            f" ('{settings.verify_v2.friendly_name}', codes of"
            f" {settings.verification.code_length} digits).",
            code="service_not_configurable",
        )
    return _json(await _service(request), status=201)


async def fetch_service(request: web.Request) -> web.Response:
    _check_service(request, request.match_info["Sid"])
    return _json(await _service(request))


# -- verifications --------------------------------------------------------------------------------


async def create_verification(request: web.Request) -> web.Response:
    _check_service(request, request.match_info["ServiceSid"])
    form = await request.post()
    phone = _phone(_required(form, "To"))
    channel = _required(form, "Channel")
    if channel != render.CHANNEL:
        raise BadRequest(f"Delivery channel disabled: '{channel}'.", code="channel_disabled")
    if form.get("CustomCode"):
        raise BadRequest("CustomCode is not enabled for this Service.", code="custom_code_disabled")
    owner = request[owner_key]
    started = await request.config_dict[orchestrator_key].start(phone, None, owner=owner)
    numbers = request.config_dict[numbers_key]
    v = started.verification
    if not started.created:
        numbers.resent(v, time.time())
    return _json(render.verification(v, numbers.sends(v), _context(request)), status=201)


async def fetch_verification(request: web.Request) -> web.Response:
    _check_service(request, request.match_info["ServiceSid"])
    v = await _pending(request, request.match_info["Sid"])
    sends = request.config_dict[numbers_key].sends(v)
    return _json(render.verification(v, sends, _context(request)))


async def update_verification(request: web.Request) -> web.Response:
    _check_service(request, request.match_info["ServiceSid"])
    form = await request.post()
    status = _required(form, "Status")
    if status not in ("canceled", "approved"):
        raise BadRequest(
            f"Invalid parameter Status: '{status}' (canceled or approved).",
            code="invalid_parameter",
        )
    v = await _pending(request, request.match_info["Sid"])
    sends = request.config_dict[numbers_key].sends(v)  # before its entry goes with the end
    orchestrator, owner = request.config_dict[orchestrator_key], request[owner_key]
    if status == "canceled":
        done = await orchestrator.cancel(v.id, owner=owner)
    else:
        # Approved the one way the orchestrator approves: by the verification's own code.
        code = request.config_dict[codes_key].code(v.salt)
        done = await orchestrator.submit_code(v.id, code, owner=owner)
    return _json(render.verification(done, sends, _context(request)))


async def check_verification(request: web.Request) -> web.Response:
    _check_service(request, request.match_info["ServiceSid"])
    form = await request.post()
    sid, to = form.get("VerificationSid"), form.get("To")
    if not sid and not to:
        raise BadRequest(
            "Either a 'To' or a 'VerificationSid' must be specified.", code="missing_to_or_sid"
        )
    code = _required(form, "Code")
    if len(code) not in CODE_LENGTHS:
        raise BadRequest("Invalid parameter Code: 4 to 10 characters.", code="invalid_parameter")
    verification_id = str(sid) if sid else _by_number(request, _phone(str(to)))
    orchestrator = request.config_dict[orchestrator_key]
    v = await orchestrator.submit_code(verification_id, code, owner=request[owner_key])
    return _json(render.verification_check(v, _context(request)))


# -- helpers --------------------------------------------------------------------------------------


async def _pending(request: web.Request, sid_or_number: str) -> Verification:
    """The pending verification named: a finished one is as good as gone on this surface."""
    owner = request[owner_key]
    if sid_or_number.startswith("+"):
        try:
            verification_id = _by_number(request, validation.phone_number(sid_or_number))
        except Unprocessable:
            raise _not_found(sid_or_number) from None
    else:
        verification_id = sid_or_number
    v = await request.config_dict[orchestrator_key].get(verification_id, owner=owner)
    if not v.pending:
        raise NotPending(v)
    return v


def _by_number(request: web.Request, phone: str) -> str:
    found = request.config_dict[numbers_key].pending_for(request[owner_key], phone)
    if found is None:
        raise _not_found(phone)
    return found


def _not_found(name: str) -> NotFound:
    return NotFound(f"The requested resource /Verifications/{name} was not found")


def _phone(raw: str) -> str:
    try:
        return validation.phone_number(raw)
    except (BadRequest, Unprocessable):
        raise Unprocessable(f"Invalid parameter To: {raw}", code="invalid_phone") from None


def _check_service(request: web.Request, sid: str) -> None:
    if sid != request.config_dict[settings_key].verify_v2.service_sid:
        raise NotFound(f"The requested resource /Services/{sid} was not found")


async def _service(request: web.Request) -> dict[str, Any]:
    dates = request.app[service_dates_key]
    if dates.created_at is None:
        agreed = await request.config_dict[store_key].agree(
            "verify_v2_service_created", repr(time.time())
        )
        dates.created_at = float(agreed)
    settings = request.config_dict[settings_key]
    return render.service(
        settings.verify_v2, settings.verification, dates.created_at, _context(request)
    )


def _context(request: web.Request) -> render.Context:
    settings = request.config_dict[settings_key].verify_v2
    base = settings.public_base_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return render.Context(base, settings.service_sid, request[account_key])


def _required(form: MultiDictProxy[str | Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or value == "":
        raise BadRequest(
            f"Missing required parameter {name} in the post body", code="invalid_parameter"
        )
    return value


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)
