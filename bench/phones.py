"""Distinct valid phone numbers: a start for a number already pending would resend, not start."""

from __future__ import annotations

import phonenumbers

from service.config import LimitSettings
from service.destinations import NUMBER_TYPES

#: +1 NPA 555 XXXX; the area codes whose 555 exchange phonenumbers accepts are found at run time.
EXCHANGE = "555"
PER_AREA = 10_000
#: The types the service sends to by default: a toll-free 800 or premium-rate 900 number is refused.
SMS_TYPES = frozenset(NUMBER_TYPES[name] for name in LimitSettings().allowed_number_types)


def _valid(number: str) -> bool:
    parsed = phonenumbers.parse(number, None)
    return phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in SMS_TYPES


def _areas() -> list[int]:
    """US and Canadian area codes for which the first and last number of the block are valid."""
    return [
        area
        for area in range(201, 990)
        if _valid(f"+1{area}{EXCHANGE}0000") and _valid(f"+1{area}{EXCHANGE}9999")
    ]


def phone_numbers(count: int, offset: int = 0) -> list[str]:
    """`count` distinct E.164 numbers, each valid and of a type the service sends SMS to.

    Numbers `offset` to `offset + count` of one fixed sequence, so runs that must not share a
    number take different offsets.
    """
    areas = _areas()
    if offset + count > len(areas) * PER_AREA:
        raise ValueError(
            f"Only {len(areas) * PER_AREA} numbers are available, not {offset + count}."
        )
    numbers = []
    for i in range(offset, offset + count):
        area, subscriber = divmod(i, PER_AREA)
        number = f"+1{areas[area]}{EXCHANGE}{subscriber:04d}"
        if not _valid(number):
            raise ValueError(f"Generated number {number} is not valid.")
        numbers.append(number)
    return numbers
