"""The PostgreSQL the tests use (tests.support.postgres): a real server, a new database per test."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.support.postgres import fresh_database, masked, with_database

#: The databases the tests of this module saw, to show that each had its own.
seen: list[str] = []


@pytest.mark.parametrize("trial", [1, 2])
async def test_each_test_gets_a_new_empty_database_on_a_real_server(
    postgres_database_url: str, trial: int
) -> None:
    connection = await asyncpg.connect(postgres_database_url)
    try:
        version = await connection.fetchval("SELECT version()")
        name = await connection.fetchval("SELECT current_database()")
        tables = await connection.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        await connection.execute("CREATE TABLE mine (id int)")  # the next test must not see it
    finally:
        await connection.close()

    assert version.startswith("PostgreSQL "), version
    assert name == urlsplit(postgres_database_url).path[1:]
    assert tables == 0
    assert name not in seen
    seen.append(name)


async def test_the_database_is_dropped_after_even_with_a_connection_left_open(
    postgres_url: str,
) -> None:
    async with fresh_database(postgres_url, "left open") as url:
        leftover = await asyncpg.connect(url)
    admin = await asyncpg.connect(postgres_url)
    try:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", urlsplit(url).path[1:]
        )
    finally:
        await admin.close()
        await leftover.close()
    assert left == 0


def test_urls_name_the_database_and_messages_hide_the_password() -> None:
    url = "postgresql://app:s3cret@db.example:5432/postgres?sslmode=require"
    assert with_database(url, "t1") == "postgresql://app:s3cret@db.example:5432/t1?sslmode=require"
    assert masked(url) == "postgresql://app:***@db.example:5432/postgres?sslmode=require"
    assert masked("postgresql://postgres@127.0.0.1:5/postgres").endswith("@127.0.0.1:5/postgres")
