"""PostgreSQL for the tests: one server for the whole run, a fresh database for each test.

Fixtures (register with `pytest_plugins = ["tests.support.postgres"]`):

- `postgres_url` (session): "postgresql://postgres@127.0.0.1:PORT/postgres", a superuser's URL.
  `VERIFY_TEST_DATABASE_URL` names a running server to use (PostgreSQL 13 or later); otherwise
  one is started from the binaries `pg_config --bindir` names (Debian's postgresql-15), in a
  temporary directory on a free port, and stopped at the end.
- `postgres_database_url`: the URL of a new, empty database, dropped after the test.

Every test that uses PostgreSQL, through either of them, is marked `slow`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.support.process import free_port

START_TIMEOUT = 60
#: initdb refuses to run as root; as root, the server runs as this user.
SERVER_USER = "postgres"
INSTALL_HINT = (
    "PostgreSQL's server is not installed: run `apt-get install postgresql-15` (Debian), or set "
    "VERIFY_TEST_DATABASE_URL to a running server's URL (postgresql://user@host:port/postgres)."
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # By its fixtures, so that no test can need PostgreSQL and still run in the fast part.
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    # Sync, as tests.support.localstack's: the server is managed by synchronous commands.
    external = os.environ.get("VERIFY_TEST_DATABASE_URL", "")
    if external:
        yield external
        return
    bindir = server_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with tempfile.TemporaryDirectory(prefix="postgres-") as base:
        yield from _run_server(bindir, Path(base))


def server_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: `pg_config --bindir`'s, else Debian's newest."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(result.stdout.strip())
    # Debian's pg_config may come from libpq-dev and name /usr/bin, where no initdb is.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(re.sub(r"\D", "", p) or 0), reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).exists() for tool in ("initdb", "pg_ctl")):
            return Path(candidate)
    return None


def _run_server(bindir: Path, base: Path) -> Iterator[str]:
    port = free_port()
    data, log = base / "data", base / "server.log"
    as_root = os.geteuid() == 0
    if as_root:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(base, user.pw_uid, user.pw_gid)

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", SERVER_USER, "--"] if as_root else []
        # cwd: the server's user may not be allowed into the directory pytest runs in.
        return subprocess.run(
            [*prefix, *command], cwd=base, capture_output=True, text=True, timeout=START_TIMEOUT
        )

    # The superuser is "postgres" whoever runs this; trust: a loopback server for one run.
    initdb = run(
        str(bindir / "initdb"),
        *("-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"),
        "--no-sync",
    )
    if initdb.returncode != 0:
        pytest.fail(f"initdb failed:\n{initdb.stdout}{initdb.stderr}", pytrace=False)
    # Durability is not under test: no fsync. The socket goes in base, not /var/run/postgresql.
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(bindir / "pg_ctl")
    try:
        started = run(
            pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"
        )
        if started.returncode != 0:
            output = log.read_text(errors="replace") if log.exists() else ""
            tail = "\n".join(output.splitlines()[-40:])
            pytest.fail(
                f"PostgreSQL on 127.0.0.1:{port} did not start:\n"
                f"{started.stdout}{started.stderr}{tail}",
                pytrace=False,
            )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        # Immediate: nothing to flush, and a test's leftover connection must not hold it up.
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")


@pytest.fixture
async def postgres_database_url(
    postgres_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    async with fresh_database(postgres_url, request.node.name) as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, label: str) -> AsyncIterator[str]:
    """A new database named after the test, so that a shared server stays readable; dropped
    after, with any connection the test left open."""
    slug = re.sub(r"[^a-z0-9_]+", "_", label.lower())[:40].strip("_")
    name = f"test_{slug}_{uuid.uuid4().hex[:8]}"
    admin = await _connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        pytest.fail(
            f"PostgreSQL at {masked(url)} cannot be reached: {type(error).__name__}: {error}",
            pytrace=False,
        )


def with_database(url: str, name: str) -> str:
    """`url` naming the database `name` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def masked(url: str) -> str:
    """`url` with its password, if any, replaced by ***, fit for a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
