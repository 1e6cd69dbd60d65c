"""Thin views: parse Twilio's form, call the orchestrator, answer in Twilio's JSON.

They run in the Twilio sub-application: the app's objects are reached through `config_dict`,
the caller's through `auth`'s request keys. A verification is named by its SID or, as the SDK
lets clients do, by its E.164 number (in the path unencoded, `/Verifications/+1415...`), and
belongs to the Service it was started in: those started on another surface to the first one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from service import validation
from service.api.keys import orchestrator_key, settings_key, store_key
from service.api.twilio import render
from service.api.twilio.auth import account_key, owner_key
from service.config import VerifyServiceSettings
from service.errors import BadRequest, NotFound, NotPending, Unprocessable
from service.models import DEFAULT_POLICY, Policy, Verification

#: Twilio's bounds on a code, whatever the Service's length: outside them the request is refused;
#: inside them a code of another form is a wrong code, and spends an attempt, as on Twilio.
CODE_LENGTHS = range(4, 11)
#: Twilio's page sizes.
PAGE_SIZES = range(1, 1001)


@dataclass(slots=True)
class ServiceDates:
    """When each Service was first served, agreed by every replica on the database, once."""

    created_at: dict[str, float] = field(default_factory=dict)


service_dates_key = web.AppKey("service_dates", ServiceDates)


# -- services -------------------------------------------------------------------------------------


async def list_services(request: web.Request) -> web.Response:
    raw = request.query.get("PageSize", "50")
    size = int(raw) if raw.isdigit() and int(raw) in PAGE_SIZES else 50
    services = request.config_dict[settings_key].verify_v2.all_services()
    shown = [await _service(request, s) for s in services[:size]]
    return _json(render.service_page(shown, _context(request, services[0]), size))


async def create_service(request: web.Request) -> web.Response:
    """Services are configured, not made: a create naming a configured one answers it."""
    form = await request.post()
    name = _required(form, "FriendlyName")
    length = form.get("CodeLength")
    length = length if isinstance(length, str) else None
    for service in request.config_dict[settings_key].verify_v2.all_services():
        if service.friendly_name == name and length in (None, str(_code_length(request, service))):
            return _json(await _service(request, service), status=201)
    raise BadRequest(
        "Services are configured, not created: [verify_v2] in config.toml names them, and"
        f" none is '{name}'" + (f" with codes of {length} digits." if length else "."),
        code="service_not_configurable",
    )


async def fetch_service(request: web.Request) -> web.Response:
    return _json(await _service(request, _service_of(request, request.match_info["Sid"])))


# -- verifications --------------------------------------------------------------------------------


async def create_verification(request: web.Request) -> web.Response:
    service = _service_of(request, request.match_info["ServiceSid"])
    form = await request.post()
    phone = _phone(_required(form, "To"))
    channel = _required(form, "Channel")
    if channel != render.CHANNEL:
        raise BadRequest(f"Delivery channel disabled: '{channel}'.", code="channel_disabled")
    if form.get("CustomCode"):
        raise BadRequest("CustomCode is not enabled for this Service.", code="custom_code_disabled")
    orchestrator = request.config_dict[orchestrator_key]
    started = await orchestrator.start(
        phone, None, owner=request[owner_key], policy=_policy(request, service)
    )
    return _json(render.verification(started.verification, _context(request, service)), 201)


async def fetch_verification(request: web.Request) -> web.Response:
    service = _service_of(request, request.match_info["ServiceSid"])
    v = await _pending(request, service, request.match_info["Sid"])
    return _json(render.verification(v, _context(request, service)))


async def update_verification(request: web.Request) -> web.Response:
    service = _service_of(request, request.match_info["ServiceSid"])
    form = await request.post()
    status = _required(form, "Status")
    if status not in ("canceled", "approved"):
        raise BadRequest(
            f"Invalid parameter Status: '{status}' (canceled or approved).",
            code="invalid_parameter",
        )
    v = await _pending(request, service, request.match_info["Sid"])
    orchestrator, owner = request.config_dict[orchestrator_key], request[owner_key]
    try:
        if status == "canceled":
            done = await orchestrator.cancel(v.id, owner=owner)
        else:
            done = await orchestrator.approve(v.id, owner=owner)
    except NotPending:  # it ended meanwhile, out of attempts too: gone, as for a fetch
        raise _not_found(request.match_info["Sid"]) from None
    return _json(render.verification(done, _context(request, service)))


async def check_verification(request: web.Request) -> web.Response:
    service = _service_of(request, request.match_info["ServiceSid"])
    form = await request.post()
    sid, to = form.get("VerificationSid"), form.get("To")
    if not sid and not to:
        raise BadRequest(
            "Either a 'To' or a 'VerificationSid' must be specified.", code="missing_to_or_sid"
        )
    code = _required(form, "Code")
    if len(code) not in CODE_LENGTHS:
        raise BadRequest("Invalid parameter Code: 4 to 10 characters.", code="invalid_parameter")
    if sid:
        verification_id = str(sid)
        await _in_service(request, service, verification_id)
    else:
        verification_id = (await _by_number(request, service, _phone(str(to)))).id
    orchestrator = request.config_dict[orchestrator_key]
    v = await orchestrator.submit_code(verification_id, code, owner=request[owner_key])
    return _json(render.verification_check(v, _context(request, service)))


# -- helpers --------------------------------------------------------------------------------------


async def _pending(
    request: web.Request, service: VerifyServiceSettings, sid_or_number: str
) -> Verification:
    """The pending verification named: a finished one is as good as gone on this surface, one
    out of attempts too (only a check is told 429 60202 of it).
    """
    if sid_or_number.startswith("+"):
        try:
            phone = validation.phone_number(sid_or_number)
        except (BadRequest, Unprocessable):
            raise _not_found(sid_or_number) from None
        try:
            return await _by_number(request, service, phone)
        except NotPending:
            raise _not_found(sid_or_number) from None
    v = await _in_service(request, service, sid_or_number)
    if not v.pending:
        raise _not_found(sid_or_number)
    return v


async def _in_service(
    request: web.Request, service: VerifyServiceSettings, verification_id: str
) -> Verification:
    """The caller's verification of this id, if it was started in `service`."""
    orchestrator = request.config_dict[orchestrator_key]
    v = await orchestrator.get(verification_id, owner=request[owner_key])
    if _policy(request, service).service != v.service:
        raise _not_found(verification_id)
    return v


async def _by_number(
    request: web.Request, service: VerifyServiceSettings, phone: str
) -> Verification:
    """The number's pending verification; one out of attempts is NotPending (60202)."""
    orchestrator = request.config_dict[orchestrator_key]
    v = await orchestrator.current_for(phone, owner=request[owner_key])
    if v is None or v.service != _policy(request, service).service:
        raise _not_found(phone)
    if not v.pending:
        raise NotPending(v)
    return v


def _not_found(name: str) -> NotFound:
    return NotFound(f"The requested resource /Verifications/{name} was not found")


def _phone(raw: str) -> str:
    try:
        return validation.phone_number(raw)
    except (BadRequest, Unprocessable):
        raise Unprocessable(f"Invalid parameter To: {raw}", code="invalid_phone") from None


def _service_of(request: web.Request, sid: str) -> VerifyServiceSettings:
    for service in request.config_dict[settings_key].verify_v2.all_services():
        if service.sid.upper() == sid.upper():
            return service
    raise NotFound(f"The requested resource /Services/{sid} was not found")


def _policy(request: web.Request, service: VerifyServiceSettings) -> Policy:
    """What `service` makes verifications with; the first Service is the service's own."""
    if service.sid == request.config_dict[settings_key].verify_v2.service_sid:
        return DEFAULT_POLICY
    return Policy(
        service=service.sid,
        code_length=service.code_length or None,
        ttl_seconds=service.ttl_seconds or None,
        max_attempts=service.max_attempts or None,
    )


def _code_length(request: web.Request, service: VerifyServiceSettings) -> int:
    return service.code_length or request.config_dict[settings_key].verification.code_length


async def _service(request: web.Request, service: VerifyServiceSettings) -> dict[str, Any]:
    dates = request.app[service_dates_key].created_at
    if service.sid not in dates:
        # The first Service keeps the name it had when it was the only one.
        name = "verify_v2_service_created"
        if service.sid != request.config_dict[settings_key].verify_v2.service_sid:
            name += f":{service.sid}"
        agreed = await request.config_dict[store_key].agree(name, repr(time.time()))
        dates[service.sid] = float(agreed)
    context = _context(request, service)
    return render.service(service, _code_length(request, service), dates[service.sid], context)


def _context(request: web.Request, service: VerifyServiceSettings) -> render.Context:
    settings = request.config_dict[settings_key].verify_v2
    base = settings.public_base_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return render.Context(base, service.sid, request[account_key])


def _required(form: MultiDictProxy[str | Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or value == "":
        raise BadRequest(
            f"Missing required parameter {name} in the post body", code="invalid_parameter"
        )
    return value


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)
