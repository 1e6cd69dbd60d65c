"""Input checks, made before anything is changed: a refused request leaves no trace."""

from __future__ import annotations

import re
from typing import Any

import phonenumbers

from service.errors import BadRequest, Unprocessable

E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def phone_number(raw: Any) -> str:
    """A valid E.164 number, exactly as written: `+` then digits, no spaces or punctuation."""
    if not isinstance(raw, str):
        raise BadRequest("'phone' must be a string.", code="invalid_type")
    if not E164.fullmatch(raw):
        raise Unprocessable(
            "'phone' must be an E.164 number such as +14155550100.", code="invalid_phone"
        )
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise Unprocessable(f"'phone' {raw} is not a valid phone number.", code="invalid_phone")
    return raw


def country_code(phone: str) -> str:
    """The calling code of a valid E.164 number, e.g. '1' or '44'."""
    return str(phonenumbers.parse(phone, None).country_code)


def reference(raw: Any, max_length: int) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequest("'reference' must be a string.", code="invalid_type")
    if not _encodable(raw):
        raise Unprocessable("'reference' must be valid Unicode text.", code="invalid_reference")
    if len(raw) > max_length:
        raise Unprocessable(
            f"'reference' must be at most {max_length} characters.", code="invalid_reference"
        )
    return raw


def _encodable(text: str) -> bool:
    """False for lone surrogates, which JSON can carry but UTF-8 (and SQLite) cannot."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def code(raw: Any, length: int) -> str:
    if not isinstance(raw, str):
        raise BadRequest("'code' must be a string.", code="invalid_type")
    if len(raw) != length or not raw.isascii() or not raw.isdigit():
        raise Unprocessable(f"'code' must be {length} digits.", code="invalid_code")
    return raw


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 1 <= len(raw) <= 255 or not raw.isprintable():
        raise BadRequest(
            "Idempotency-Key must be 1 to 255 printable characters.", code="invalid_idempotency_key"
        )
    return raw
