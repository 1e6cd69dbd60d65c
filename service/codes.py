"""One-time codes: derived from a server secret and a per-verification salt, never stored.

The database holds only the salt, which is useless without the secret; the secret lives in the
environment or in a file beside the database. Deriving instead of storing lets the service send the
very same code again after a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
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
        self._secret = secret
        self.length = length

    @staticmethod
    def new_salt() -> bytes:
        return secrets.token_bytes(SALT_BYTES)

    def code(self, salt: bytes, length: int = 0) -> str:
        """The code of `salt`, of `length` digits (0: the book's own length)."""
        length = length or self.length
        digest = hmac.new(self._secret, salt, hashlib.sha256).digest()
        # 64 bits reduced modulo 10**length: the bias is below 10**-9, far under any guessing odds.
        number = int.from_bytes(digest[:8], "big") % 10**length
        return f"{number:0{length}d}"

    def fingerprint(self) -> str:
        """Tells secrets apart without telling them: equal for books that make equal codes of
        a salt and a length (each verification keeps its own length).
        """
        label = b"verification-service code secret"
        return hmac.new(self._secret, label, hashlib.sha256).hexdigest()[:32]

    def matches(self, salt: bytes, candidate: str, length: int = 0) -> bool:
        """Constant-time comparison, so timing tells an attacker nothing about the digits."""
        return hmac.compare_digest(self.code(salt, length).encode(), candidate.encode())


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
    _check_private(path)
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"The code secret file '{path}' does not hold hex.") from None


def _create_secret_file(path: Path) -> None:
    """Write a secret to a file of its own, on disk, then link it in: never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file 0600, and in the same directory, where a link to it can be made.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(SECRET_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        # A link, not a rename: it fails if the file exists, as O_EXCL did, so of two processes
        # starting at once the first one's secret stays and the other reads it.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    # The new name is on disk only once its directory is: a power cut must not lose the secret
    # after codes derived from it were sent.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _check_private(path: Path) -> None:
    """Refuse a secret others may read: with it and the database, every code can be derived."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The code secret file '{path}' has mode {mode:04o}, which lets other users read or"
            f" change it: run `chmod 600 {path}`."
        )
