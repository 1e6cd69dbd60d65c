"""What this surface shows: Twilio's Verification, VerificationCheck and Service, every field.

Dates are `YYYY-MM-DDTHH:MM:SSZ`, the one form the SDK parses; URLs are absolute. Fields of
features this service does not have (PSD2, lookup, SNA, push, TOTP, WhatsApp, passkeys) are
present with the empty value Twilio gives a Service or Verification that does not use them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from service.config import VerifyServiceSettings
from service.models import Status, Verification

CHANNEL = "sms"


def twilio_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@dataclass(frozen=True, slots=True)
class Context:
    """What an answer needs beyond the verification: where it is, and whose."""

    base_url: str
    service_sid: str
    account_sid: str

    def service_url(self) -> str:
        return f"{self.base_url}/v2/Services/{self.service_sid}"


def verification(v: Verification, ctx: Context) -> dict[str, Any]:
    sends = _sends(v)
    return {
        "sid": v.id,
        "service_sid": ctx.service_sid,
        "account_sid": ctx.account_sid,
        "to": v.phone,
        "channel": CHANNEL,
        "status": v.status.value,
        "valid": v.status is Status.APPROVED,
        "lookup": {},
        "amount": None,
        "payee": None,
        "send_code_attempts": [
            {"time": twilio_time(at), "channel": CHANNEL, "attempt_sid": _attempt_sid(v.id, i)}
            for i, at in enumerate(sends)
        ],
        "date_created": twilio_time(v.created_at),
        "date_updated": twilio_time(_updated(v, sends)),
        "sna": None,
        "url": f"{ctx.service_url()}/Verifications/{v.id}",
    }


def verification_check(v: Verification, ctx: Context) -> dict[str, Any]:
    return {
        "sid": v.id,
        "service_sid": ctx.service_sid,
        "account_sid": ctx.account_sid,
        "to": v.phone,
        "channel": CHANNEL,
        "status": v.status.value,
        "valid": v.status is Status.APPROVED,
        "amount": None,
        "payee": None,
        "date_created": twilio_time(v.created_at),
        "date_updated": twilio_time(v.completed_at or v.created_at),
        "sna_attempts_error_codes": [],
    }


def service(
    settings: VerifyServiceSettings, code_length: int, created_at: float, ctx: Context
) -> dict[str, Any]:
    url = ctx.service_url()
    return {
        "sid": settings.sid,
        "account_sid": ctx.account_sid,
        "friendly_name": settings.friendly_name,
        "code_length": code_length,
        "lookup_enabled": False,
        "psd2_enabled": False,
        "skip_sms_to_landlines": False,
        "dtmf_input_required": False,
        "tts_name": None,
        "do_not_share_warning_enabled": False,
        "custom_code_enabled": False,
        "push": {"include_date": False, "apn_credential_sid": None, "fcm_credential_sid": None},
        "totp": {"issuer": None, "time_step": None, "code_length": None, "skew": None},
        "default_template_sid": None,
        "whatsapp": {"msg_service_sid": None, "from": None},
        "passkeys": {
            "relying_party": {"id": None, "name": None, "origins": None},
            "authenticator_attachment": None,
            "discoverable_credentials": None,
            "user_verification": None,
        },
        "verify_event_subscription_enabled": False,
        "date_created": twilio_time(created_at),
        "date_updated": twilio_time(created_at),
        "url": url,
        "links": {
            "verification_checks": f"{url}/VerificationCheck",
            "verifications": f"{url}/Verifications",
        },
    }


def service_page(services: list[dict[str, Any]], ctx: Context, page_size: int) -> dict[str, Any]:
    """The list of Services: one page holds them all."""
    url = f"{ctx.base_url}/v2/Services?PageSize={page_size}&Page=0"
    return {
        "services": services,
        "meta": {
            "first_page_url": url,
            "key": "services",
            "next_page_url": None,
            "page": 0,
            "page_size": page_size,
            "previous_page_url": None,
            "url": url,
        },
    }


def _sends(v: Verification) -> list[float]:
    """When the code was sent, first to last: the first when it was asked to be (its start)."""
    return [v.created_at, *v.resends]


def _updated(v: Verification, sends: list[float]) -> float:
    if v.completed_at is not None:
        return v.completed_at
    return max([v.created_at, *sends])


def _attempt_sid(verification_id: str, index: int) -> str:
    # Stable for one send of one verification, so every fetch shows the same SIDs.
    return "VL" + hashlib.sha256(f"{verification_id}:{index}".encode()).hexdigest()[:32]
