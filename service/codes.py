"""One-time codes: derived from a server secret and a per-verification salt, never stored.

The database holds only the salt, which is useless without the secret; the secret lives in the
environment or in a file beside the database. Deriving instead of storing lets the service send the
very same code again after a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from service.config import DatabaseSettings
from service.errors import ConfigError

SALT_BYTES = 16
SECRET_BYTES = 32


class CodeBook:
    """Makes and checks codes of `length` digits."""

    def __init__(self, secret: bytes, length: int) -> None:
        if len(secret) < SECRET_BYTES:
            raise ConfigError(f"The code secret must be at least {SECRET_BYTES} bytes.")
        if not 4 <= length <= 10:
            raise ConfigError("Config 'verification.code_length' must be between 4 and 10.")
        self._secret = secret
        self.length = length

    @staticmethod
    def new_salt() -> bytes:
        return secrets.token_bytes(SALT_BYTES)

    def code(self, salt: bytes) -> str:
        digest = hmac.new(self._secret, salt, hashlib.sha256).digest()
        # 64 bits reduced modulo 10**length: the bias is below 10**-9, far under any guessing odds.
        number = int.from_bytes(digest[:8], "big") % 10**self.length
        return f"{number:0{self.length}d}"

    def matches(self, salt: bytes, candidate: str) -> bool:
        """Constant-time comparison, so timing tells an attacker nothing about the digits."""
        return hmac.compare_digest(self.code(salt).encode(), candidate.encode())


def load_secret(settings: DatabaseSettings) -> bytes:
    """The secret from the settings, else from its file, which is created on first start."""
    if settings.secret:
        try:
            return bytes.fromhex(settings.secret)
        except ValueError:
            raise ConfigError("Config 'database.secret' must be hex.") from None
    path = Path(settings.secret_file or f"{settings.path}.secret")
    if not path.exists():
        _create_secret_file(path)
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"The code secret file '{path}' does not hold hex.") from None


def _create_secret_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once must not each write a different secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(SECRET_BYTES) + "\n")
        file.flush()
        os.fsync(file.fileno())
