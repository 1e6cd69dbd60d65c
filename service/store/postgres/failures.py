"""Which of asyncpg's errors are the database's state (try again later), and how they are told."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

from service.errors import StoreUnavailable

#: The database's state, not the program's: trying again later may work. The rest (a unique
#: or foreign key violated, a syntax error, a wrong type) is a bug, and is raised as it is.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (the command timeout) is one too
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.InsufficientResourcesError,  # 53: disk full, memory, too many connections
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, cannot connect now
    asyncpg.exceptions.PostgresSystemError,  # 58: an I/O error
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock, serialization failure
    asyncpg.exceptions.LockNotAvailableError,  # 55P03: waited lock_timeout for a row lock
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a standby, during a failover
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # 25P03: paused mid-transaction
)


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable a transient failure is told as."""
    # The message names the cause (refused, full, shutting down) without the URL or any data.
    return StoreUnavailable(
        f"The database is unavailable ({type(exc).__name__}: {exc}); try again shortly."
    )
