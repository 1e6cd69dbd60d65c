"""Where SMS may go: the destination policy, the first defence against SMS pumping.

Pumping earns from the SMS themselves, so it aims at numbers that pay their operator: premium-rate
and shared-cost lines, and countries the service has no users in. A start passes this policy
before any limit counts it. Countries are named by calling code ("44") or by region ("GB"): +1 is
shared by the US, Canada and 23 other regions, most in the Caribbean, so only "US" means the US.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import PhoneNumberType

from service.errors import ConfigError, Unprocessable

if TYPE_CHECKING:  # the settings check themselves with this module: no import at run time
    from service.config import LimitSettings

log = logging.getLogger(__name__)

#: phonenumbers' number types by their names in lower case: "mobile", "premium_rate", ...
NUMBER_TYPES: dict[str, int] = {
    name.lower(): value
    for name, value in vars(PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
}
#: Calling codes and the regions each serves, e.g. "1": ("US", "AG", "AI", ...).
CALLING_CODES: dict[str, tuple[str, ...]] = {
    str(code): tuple(regions) for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
}
#: What phonenumbers names the region of a number with no country (+800, +881 satellite, ...).
NON_GEOGRAPHIC = phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY


@dataclass(frozen=True)
class Destinations:
    """The allowed calling codes, regions and number types; an empty set allows every one."""

    calling_codes: frozenset[str]
    regions: frozenset[str]
    number_types: frozenset[int]

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> Destinations:
        """Parse the settings, refusing names that mean nothing (a typo must not allow all)."""
        codes: set[str] = set()
        regions: set[str] = set()
        for entry in settings.allowed_country_codes:
            name = entry.strip().removeprefix("+")
            if name in CALLING_CODES:
                codes.add(name)
            elif name.upper() in phonenumbers.SUPPORTED_REGIONS:
                regions.add(name.upper())
            else:
                raise ConfigError(
                    f"Config 'limits.allowed_country_codes' has {entry!r}, which is neither a"
                    ' calling code ("44") nor a region code ("GB").'
                )
        types: set[int] = set()
        for entry in settings.allowed_number_types:
            if entry not in NUMBER_TYPES:
                raise ConfigError(
                    f"Config 'limits.allowed_number_types' has {entry!r}, which is not a number"
                    f" type; the types are {', '.join(NUMBER_TYPES)}."
                )
            types.add(NUMBER_TYPES[entry])
        return cls(frozenset(codes), frozenset(regions), frozenset(types))

    def warn_of_shared_codes(self) -> None:
        """Log each allowed calling code that more than one region shares, once at start-up."""
        for code in sorted(self.calling_codes, key=int):
            shared = [r for r in CALLING_CODES[code] if r != NON_GEOGRAPHIC]
            if len(shared) > 1:
                log.warning(
                    "limits.allowed_country_codes has %s, which admits every region that shares"
                    " +%s: %s; list the regions you serve instead (e.g. %r)",
                    code,
                    code,
                    ", ".join(shared),
                    shared[0],
                )

    def check(self, phone: str) -> None:
        """Raise Unprocessable, coded with the reason, unless SMS may go to E.164 `phone`."""
        if not (self.calling_codes or self.regions or self.number_types):
            return
        number = phonenumbers.parse(phone, None)
        if self.calling_codes or self.regions:
            code = str(number.country_code)
            region = phonenumbers.region_code_for_number(number)
            if code not in self.calling_codes and region not in self.regions:
                where = "non-geographic" if region in (None, NON_GEOGRAPHIC) else region
                raise Unprocessable(
                    f"SMS to {where} numbers (+{code}) is not enabled.",
                    code="country_not_allowed",
                )
        if self.number_types:
            kind = phonenumbers.number_type(number)
            if kind not in self.number_types:
                name = next(n for n, v in NUMBER_TYPES.items() if v == kind).replace("_", "-")
                raise Unprocessable(
                    f"SMS to {name} numbers is not enabled.", code="number_type_not_allowed"
                )
