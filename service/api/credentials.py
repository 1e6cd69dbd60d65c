"""The service's API keys, as every surface checks them: by digest, all compared, constant time."""

from __future__ import annotations

import hashlib
import hmac

from service.config import Secret


class ApiKeys:
    """The configured keys; a caller is known by its key's fingerprint, on whichever surface."""

    def __init__(self, keys: tuple[Secret, ...]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def fingerprint(self, offered: str) -> str | None:
        """The first twelve hex digits of the key's digest, or None if it is not one of them."""
        # Digests are compared, all of them: neither the length nor the position of a match leaks.
        digest = hashlib.sha256(offered.encode()).digest()
        found = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):
                found = known
        return found.hex()[:12] if found is not None else None
