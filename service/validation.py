"""Input checks, made before anything is changed: a refused request leaves no trace."""

from __future__ import annotations

import re
from typing import Any

import phonenumbers

from service.errors import BadRequest, Unprocessable

#: A leading `+`, then digits and the punctuation people paste: spaces, hyphens, dots and
#: parentheses. phonenumbers alone would also take letters (vanity numbers), extensions, `tel:`
#: and full-width digits, none of which an SMS can go to as written.
PASTED_NUMBER = re.compile(r"\+[0-9 ().-]{2,31}")


def phone_number(raw: Any) -> str:
    """A valid number in its canonical E.164 form, which is how it is stored, limited and sent.

    `+1 (415) 555-0100`, `+1 1 415 555 0100` and `+14155550100` are one handset: punctuation and a
    national trunk prefix after the country code (`+44 (0) 7400 123456`) are dropped, so every
    spelling counts against the same per-number limit. The `+` stays required: a region is never
    guessed.
    """
    if not isinstance(raw, str):
        raise BadRequest("'phone' must be a string.", code="invalid_type")
    if not PASTED_NUMBER.fullmatch(raw):
        raise Unprocessable(
            "'phone' must be an E.164 number such as +14155550100.", code="invalid_phone"
        )
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise Unprocessable(f"'phone' {raw} is not a valid phone number.", code="invalid_phone")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


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


#: The lengths a code may have; each verification's is one of them (`verification.code_length`
#: when it started, or its Service's).
CODE_LENGTHS = range(4, 11)


def code(raw: Any, length: int | None = None) -> str:
    """Digits, `length` of them; None: any of `CODE_LENGTHS`, the verification's checked after."""
    if not isinstance(raw, str):
        raise BadRequest("'code' must be a string.", code="invalid_type")
    lengths = CODE_LENGTHS if length is None else (length,)
    if len(raw) not in lengths or not raw.isascii() or not raw.isdigit():
        raise code_refused(length or f"{lengths[0]} to {lengths[-1]}")
    return raw


def code_refused(length: int | str) -> Unprocessable:
    return Unprocessable(f"'code' must be {length} digits.", code="invalid_code")


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 1 <= len(raw) <= 255 or not raw.isprintable():
        raise BadRequest(
            "Idempotency-Key must be 1 to 255 printable characters.", code="invalid_idempotency_key"
        )
    return raw
