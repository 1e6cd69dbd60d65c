"""The database's files on disk: one process at a time, readable by their owner only.

SQLite's locks serialise writes, not services: a second instance on the same file would recover
the first one's pending verifications and send every code again. So a service holds an exclusive
`flock` on `<path>.lock` for its life. The kernel drops it when the process dies, SIGKILL
included, so a crash leaves no stale lock, and the file is never deleted (deleting it would let a
third process lock a new file while a second still holds the old one). The database holds phone
numbers; SQLite gives its -wal and -shm the database file's mode, so 0600 on that file covers all.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat

from service.errors import ConfigError

log = logging.getLogger(__name__)

#: Mode bits that let anyone but the owner read or write a file.
SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


class DatabaseLock:
    """An exclusive hold on a database, for one process; `release` or exiting ends it."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, database: str) -> DatabaseLock:
        """Lock `database`, or raise ConfigError naming the process that holds it."""
        path = f"{database}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise ConfigError(
                f"Config 'database.path' is '{database}', in a directory that does not exist."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"The database '{database}' is in use by another process ({holder}, holding"
                f" '{path}'). One process per database: stop that one, or give this one its own"
                " database.path."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The pid is for the message above only: the lock, not the file's content, is the claim.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def make_private(database: str) -> None:
    """Create `database` with mode 0600 before SQLite does, or tighten it and its journals."""
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        # An empty file is an empty SQLite database: SQLite takes it as it would a new one.
        os.close(fd)
        return
    for path in (database, f"{database}-wal", f"{database}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        if mode & SHARED_BITS:
            _tighten(path, mode)


def _tighten(path: str, mode: int) -> None:
    try:
        os.chmod(path, mode & ~SHARED_BITS)
    except PermissionError:
        raise ConfigError(
            f"The database file '{path}' has mode {mode:04o}, which lets other users read phone"
            f" numbers, and this process may not change it: run `chmod 600 {path}` as its owner."
        ) from None
    log.warning(
        "database file %s had mode %04o, readable by other users; it is now %04o",
        path,
        mode,
        mode & ~SHARED_BITS,
    )
