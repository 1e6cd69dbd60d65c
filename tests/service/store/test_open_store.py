"""The store is chosen by `database.url`; the old `database.path` still names the SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import DatabaseSettings, settings_from
from service.errors import ConfigError
from service.store import database_url, open_store, sqlite_path
from service.store.sqlite.store import SqliteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///verifications.db", "verifications.db"),
        ("sqlite:///data/verifications.db", "data/verifications.db"),
        ("sqlite:////var/lib/verify/verifications.db", "/var/lib/verify/verifications.db"),
        ("SQLite:///v.db", "v.db"),
    ],
)
def test_sqlite_urls_are_read_as_sqlalchemy_writes_them(url: str, path: str) -> None:
    assert sqlite_path(url) == path


def test_without_a_url_the_path_is_the_database() -> None:
    assert database_url(DatabaseSettings(path="/srv/v.db")) == "sqlite:////srv/v.db"
    assert database_url(DatabaseSettings(path="v.db")) == "sqlite:///v.db"
    assert database_url(DatabaseSettings(url="sqlite:///a.db", path="b.db")) == "sqlite:///a.db"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+asyncpg://verify:hunter2@db/verify", "names PostgreSQL"),
        ("mysql://verify:hunter2@db/verify", "has the scheme 'mysql', which is not supported"),
        ("verifications.db", "must be a URL"),
        ("sqlite://", "must name a file"),
        ("sqlite:///", "must name a file"),
        ("sqlite://host/verifications.db", "must name a file"),
        ("sqlite:///verifications.db?mode=ro", "must name a file"),
    ],
)
def test_other_urls_are_refused_at_load_naming_the_key(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"Config 'database\.url'") as caught:
        settings_from({"database": {"url": url}}, env={})
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgresql_urls_are_taken(scheme: str) -> None:
    url = f"{scheme}://verify:hunter2@db/verify"
    assert database_url(settings_from({"database": {"url": url}}, env={}).database) == url


def test_the_url_comes_from_the_environment_too() -> None:
    settings = settings_from({}, env={"VERIFY_DATABASE_URL": "sqlite:///from-env.db"})
    assert database_url(settings.database) == "sqlite:///from-env.db"


async def test_open_store_opens_the_file_the_url_names(tmp_path: Path) -> None:
    path = tmp_path / "chosen.db"
    settings = DatabaseSettings(url=f"sqlite:///{path}", path=str(tmp_path / "ignored.db"))
    store = await open_store(settings, clock=lambda: 1.0)
    try:
        assert isinstance(store, SqliteStore)
        assert await store.pending() == []
    finally:
        await store.close()
    assert path.exists()
    assert not (tmp_path / "ignored.db").exists()
