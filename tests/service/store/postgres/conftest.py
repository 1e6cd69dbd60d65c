"""Fixtures of the PostgreSQL store's tests: stores on a new database each test, a connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from service.store import Store
from service.store.postgres.store import PostgresStore
from tests.support.clock import SetClock

Opener = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
def url(postgres_database_url: str) -> str:
    return postgres_database_url


@pytest.fixture
async def opened(url: str, clock: SetClock) -> AsyncIterator[Opener]:
    """Opens stores on the test's database (a replica each), and closes them after."""
    stores: list[PostgresStore] = []

    async def open_one(**options: Any) -> PostgresStore:
        # Each its own replica, with a name of its own unless given one: they stand for
        # replicas writing at once.
        stores.append(await PostgresStore.open(url, clock=clock, min_size=1, max_size=4, **options))
        return stores[-1]

    yield open_one
    for s in stores:
        await s.close()


@pytest.fixture
async def store(opened: Callable[[], Any]) -> Store:
    opened_store: Store = await opened()
    return opened_store


@pytest.fixture
async def db(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, to look at the rows behind the store."""
    connection = await asyncpg.connect(url)
    yield connection
    await connection.close()
