"""The files beside the service: one process per database, and none readable by other users."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from service.codes import CodeBook
from tests.support.api import API_KEY, AUTH
from tests.support.database import database
from tests.support.process import ServiceProcess, request, run_to_exit
from tests.support.twilio import TwilioServer

pytestmark = pytest.mark.slow  # each test runs the service as a process

PHONE = "+14155550100"


def service_env(
    tmp_path: Path, twilio: TwilioServer, database: str = "verifications.db"
) -> dict[str, str]:
    return {
        "VERIFY_DATABASE_PATH": str(tmp_path / database),
        **twilio.sender_env,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_AUTH_API_KEYS": API_KEY,
    }


@pytest.fixture
async def processes() -> AsyncIterator[list[ServiceProcess]]:
    """Services a test starts; any still running at its end are killed."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.returncode is None:
            await process.kill()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files are made 0644 unless asked otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def start_verification(service: ServiceProcess) -> str:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        status, view = await request(
            session, "POST", f"{service.url}/verifications", json={"phone": PHONE}
        )
    assert status == 202, view
    return str(view["id"])


async def test_a_second_process_on_the_same_database_refuses_to_start(
    tmp_path: Path, twilio: TwilioServer, processes: list[ServiceProcess]
) -> None:
    env = service_env(tmp_path, twilio)
    first = ServiceProcess(env, tmp_path / "first.log")
    processes.append(first)
    await first.start()
    assert first.process is not None

    second = await asyncio.to_thread(run_to_exit, env, tmp_path)

    assert second.returncode == 2, second.stderr
    assert "cannot start" in second.stderr, second.stderr
    assert f"'{env['VERIFY_DATABASE_PATH']}' is in use" in second.stderr, second.stderr
    assert f"pid {first.process.pid}" in second.stderr, second.stderr
    # The first never noticed: it serves on.
    await start_verification(first)
    await twilio.wait_for_message(PHONE)

    # SIGKILL runs no clean-up, yet leaves no lock behind: the kernel drops it with the process.
    await first.kill()
    third = ServiceProcess(env, tmp_path / "third.log")
    processes.append(third)
    await third.start()
    await start_verification(third)


async def test_database_files_are_private(
    tmp_path: Path, twilio: TwilioServer, processes: list[ServiceProcess], umask_022: None
) -> None:
    service = ServiceProcess(service_env(tmp_path, twilio), tmp_path / "service.log")
    processes.append(service)
    await service.start()
    await start_verification(service)

    database = tmp_path / "verifications.db"
    files = [database, *(Path(f"{database}{s}") for s in ("-wal", "-shm", ".lock", ".secret"))]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}


async def test_an_open_database_file_is_tightened_with_a_warning(
    tmp_path: Path, twilio: TwilioServer, processes: list[ServiceProcess]
) -> None:
    database = tmp_path / "verifications.db"
    sqlite3.connect(database).close()
    database.chmod(0o644)

    service = ServiceProcess(service_env(tmp_path, twilio), tmp_path / "service.log")
    processes.append(service)
    await service.start()

    assert mode(database) == 0o600
    assert f"database file {database} had mode 0644" in service.logs()


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o620], ids=lambda m: f"{m:04o}")
async def test_a_secret_file_others_may_touch_stops_the_service(
    tmp_path: Path, twilio: TwilioServer, loose: int
) -> None:
    secret = tmp_path / "verifications.db.secret"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(loose)

    done = await asyncio.to_thread(run_to_exit, service_env(tmp_path, twilio), tmp_path)

    assert done.returncode == 2, done.stderr
    assert f"secret file '{secret}' has mode {loose:04o}" in done.stderr, done.stderr
    assert f"chmod 600 {secret}" in done.stderr, done.stderr


async def test_processes_starting_together_share_one_secret(
    tmp_path: Path, twilio: TwilioServer, processes: list[ServiceProcess]
) -> None:
    secret = tmp_path / "shared.secret"
    for n in range(4):
        env = service_env(tmp_path, twilio, database=f"db{n}.db")
        env["VERIFY_DATABASE_SECRET_FILE"] = str(secret)
        processes.append(ServiceProcess(env, tmp_path / f"service{n}.log"))
    await asyncio.gather(*(p.start() for p in processes))

    book = CodeBook(bytes.fromhex(secret.read_text().strip()), 6)
    for n, service in enumerate(processes):
        verification_id = await start_verification(service)
        sent = await twilio.wait_for_message(PHONE)
        with database(tmp_path / f"db{n}.db") as db:
            (salt,) = db.execute(
                "SELECT salt FROM verifications WHERE id = ?", (verification_id,)
            ).fetchone()
        assert sent.code == book.code(salt), f"process {n} derives its codes from another secret"
    # Each wrote its own candidate beside the file and linked it in; none is left over.
    assert [name for name in os.listdir(tmp_path) if "secret" in name] == ["shared.secret"]
