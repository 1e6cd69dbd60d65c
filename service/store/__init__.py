"""Durable state behind one interface (`base.Store`), the database chosen by `database.url`.

`open_store` reads the URL's scheme and opens that backend (`sqlite/` or `postgres/`), as dbos's
`SystemDatabase.create()` picks its SQLite or PostgreSQL system database; the backend is imported
only when chosen, so one never needs the other's driver. A new database is a package beside them
and a branch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from service.errors import ConfigError
from service.models import Clock
from service.store.base import Decided, KeyHolder, Lease, Outbox, Purged, Store, Tally, Window

if TYPE_CHECKING:
    from service.config import DatabaseSettings

__all__ = [
    "Decided",
    "KeyHolder",
    "Lease",
    "Outbox",
    "Purged",
    "Store",
    "Tally",
    "Window",
    "check_url",
    "database_url",
    "is_postgres",
    "open_store",
    "sqlite_path",
]

#: How the URL is written in what the errors say: SQLAlchemy's spelling.
SQLITE_FORMS = "sqlite:///relative/path or sqlite:////absolute/path"
POSTGRES_FORM = "postgresql://user:password@host:port/database"
URL_FORMS = f"{SQLITE_FORMS}, or {POSTGRES_FORM}"
#: The schemes libpq (and so asyncpg) reads as PostgreSQL.
POSTGRES_SCHEMES = ("postgresql", "postgres")


async def open_store(
    settings: DatabaseSettings,
    clock: Clock,
    replica: str = "",
    webhooks: Mapping[str, str] | None = None,
) -> Store:
    """Open the store `settings` name; raise ConfigError, naming the key, if it cannot be.

    `replica` names this process among those sharing a PostgreSQL database (its lease's name),
    unless `database.replica_name` does. `webhooks`: the endpoints configured (name -> URL),
    each of which gets every outcome from now on.
    """
    url = database_url(settings)
    if is_postgres(url):
        from service.store.postgres.store import PostgresStore

        return await PostgresStore.open(
            url,
            clock=clock,
            replica=settings.replica_name or replica,
            lease_seconds=settings.lease_seconds,
            lock_timeout_ms=settings.busy_timeout_ms,
            webhooks=webhooks,
        )
    path = sqlite_path(url)
    from service.store.sqlite.store import SqliteStore

    return await SqliteStore.open(
        path, clock=clock, busy_timeout_ms=settings.busy_timeout_ms, webhooks=webhooks
    )


def database_url(settings: DatabaseSettings) -> str:
    """`database.url`, or, when it is empty, the SQLite file `database.path`."""
    return settings.url or f"sqlite:///{settings.path}"


def check_url(url: str) -> None:
    """Refuse, with a ConfigError naming the key, a URL that no store here opens."""
    if not is_postgres(url):
        sqlite_path(url)


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (postgresql:// or postgres://)."""
    scheme, separator, _ = url.partition("://")
    return bool(separator) and scheme.lower() in POSTGRES_SCHEMES


def sqlite_path(url: str) -> str:
    """The file a `sqlite:///` URL names, or ConfigError for any other URL.

    The URL is never repeated in the message: another database's would hold its password.
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator:
        raise ConfigError(f"Config 'database.url' must be a URL: {URL_FORMS}.")
    if scheme.startswith("postgresql+"):
        # SQLAlchemy's driver suffix: asyncpg, the one driver here, reads the plain scheme.
        raise ConfigError(
            f"Config 'database.url' names PostgreSQL with a driver ('{scheme}'); write it"
            f" without one: {POSTGRES_FORM}."
        )
    if scheme != "sqlite":
        raise ConfigError(
            f"Config 'database.url' has the scheme '{scheme}', which is not supported: {URL_FORMS}."
        )
    # sqlite:/// then the path: a host (sqlite://host/...) or query (?mode=ro) is not ours.
    if not rest.startswith("/") or rest == "/" or "?" in rest:
        raise ConfigError(f"Config 'database.url' must name a file: {SQLITE_FORMS}.")
    return rest[1:]
