"""Fixtures: the app over real HTTP, a real SQLite file, the real twilio SDK to a local server.

`VERIFY_TEST_STORE=postgres` puts each test's store in a new PostgreSQL database instead of the
SQLite file (`make test-postgres`); the file's path still places the secret file beside it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.config import Settings, settings_from
from tests.support.api import API_KEY, MakeClient, MakeSettings
from tests.support.collector import freeze_survivors
from tests.support.twilio import TwilioServer

pytest_plugins = ["tests.support.localstack", "tests.support.postgres"]


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioServer]:
    async with TwilioServer() as server:
        yield server


#: The stores `VERIFY_TEST_STORE` may name; the first is the default.
TEST_STORES = ("sqlite", "postgres")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # With PostgreSQL behind make_settings, a test using it needs the server: slow, as
    # tests.support.postgres marks the tests that ask for the server themselves.
    if chosen_store() == "postgres":
        for item in items:
            if "make_settings" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.slow)


def chosen_store() -> str:
    store = os.environ.get("VERIFY_TEST_STORE", "") or TEST_STORES[0]
    if store not in TEST_STORES:
        raise pytest.UsageError(
            f"VERIFY_TEST_STORE={store!r} names no store; it is one of {', '.join(TEST_STORES)}."
        )
    return store


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """`database.url` for one test: empty (the SQLite file) or a new PostgreSQL database."""
    if chosen_store() == "postgres":
        url: str = request.getfixturevalue("postgres_database_url")
        return url
    return ""


@pytest.fixture
def make_settings(tmp_path: Path, twilio: TwilioServer, store_url: str) -> MakeSettings:
    """Settings for one test: its own database, the local Twilio, quick retries, no queue."""

    def make(**sections: dict[str, Any]) -> Settings:
        tables: dict[str, dict[str, Any]] = {
            "database": {"path": str(tmp_path / "verifications.db"), "url": store_url},
            "verification": {"ttl_seconds": 30.0},
            "sms": {
                "sender": "twilio",
                "account_sid": twilio.account_sid,
                "auth_token": twilio.auth_token,
                "from_number": "+15005550006",
                "api_base_url": twilio.base_url,
                "timeout_seconds": 2.0,
                "retry_delays": [0.05, 0.1],
            },
            "queue": {"enabled": False},
            "auth": {"api_keys": [API_KEY]},
            "server": {"shutdown_grace_seconds": 1.0},
        }
        for name, values in sections.items():
            tables[name] = {**tables.get(name, {}), **values}
        return settings_from(tables, env={})

    return make


@pytest.fixture
async def make_client(
    make_settings: MakeSettings,
) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(settings: Settings | None = None, **sections: dict[str, Any]) -> Any:
        app = create_app(settings or make_settings(**sections))
        client = TestClient(TestServer(app))
        try:
            await client.start_server()
        except BaseException:
            await client.close()  # a start-up refused: what it opened is closed all the same
            raise
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[web.Request, web.Application]:
    return await make_client()


def pytest_collection_finish(session: pytest.Session) -> None:
    # Collection has imported every test module and all they import.
    freeze_survivors()
