"""The console sender is chosen, never fallen back on, and its codes go to stdout, not the logs."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.api import API_KEY, AUTH
from tests.support.process import ROOT, ServiceProcess, request, run_to_exit

pytestmark = pytest.mark.slow  # each test runs the service as a process

PHONE = "+14155550100"


def test_auto_with_api_keys_and_no_twilio_refuses_to_start(tmp_path: Path) -> None:
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_SMS_SENDER": "auto",
    }
    done = run_to_exit(env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr, done.stderr
    for named in ("'sms.account_sid'", "'sms.auth_token'", 'sms.sender = \\"console\\"'):
        assert named in done.stderr, done.stderr


class SplitStreams(ServiceProcess):
    """The service with its stdout and its stderr (the logs) in separate files."""

    async def start(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        with self.stdout.open("wb") as out, self.log_path.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service", "--config", str(ROOT / "config.toml"),
                cwd=ROOT, env=self.env, stdout=out, stderr=err,
            )  # fmt: skip
        await self.wait_healthy(timeout)

    @property
    def stdout(self) -> Path:
        return self.log_path.with_suffix(".stdout")


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[SplitStreams]:
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_SMS_SENDER": "console",
        "VERIFY_SMS_ACCOUNT_SID": "",
        "VERIFY_SMS_AUTH_TOKEN": "",
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_AUTH_TOKEN": "",
    }
    process = SplitStreams(env, tmp_path / "service.log")
    await process.start()
    yield process
    await process.stop()


async def test_explicit_console_warns_and_prints_codes_to_stdout_only(
    console: SplitStreams,
) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        status, view = await request(
            session, "POST", f"{console.url}/verifications", json={"phone": PHONE}
        )
        assert status == 202, view
        printed = await _printed_code(console.stdout)
        status, answer = await request(
            session,
            "POST",
            f"{console.url}/verifications/{view['id']}/code",
            json={"code": printed},
        )
    assert (status, answer["status"]) == (200, "approved"), answer
    await console.stop()
    logs = console.log_path.read_text()
    assert "SMS ARE NOT SENT" in logs
    assert printed not in logs, "a code reached the logs"


async def _printed_code(stdout: Path) -> str:
    for _ in range(100):
        code = _code_in(stdout)
        if code is not None:
            return code
        await asyncio.sleep(0.05)
    raise AssertionError(f"no SMS on stdout {stdout}")


def _code_in(stdout: Path) -> str | None:
    found = re.search(rf"SMS to \{PHONE}: .*?(\d{{6}})", stdout.read_text())
    return found.group(1) if found else None


async def test_development_without_api_keys_still_gets_the_console(tmp_path: Path) -> None:
    # What `make run` sets up: no key, so no callers but the developer.
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_AUTH_API_KEYS": "",
        "VERIFY_AUTH_ALLOW_UNAUTHENTICATED": "true",
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_SMS_SENDER": "auto",
        "VERIFY_SMS_ACCOUNT_SID": "",
        "VERIFY_SMS_AUTH_TOKEN": "",
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_AUTH_TOKEN": "",
    }
    process = SplitStreams(env, tmp_path / "service.log")
    await process.start()
    try:
        async with aiohttp.ClientSession() as session:
            status, view = await request(
                session, "POST", f"{process.url}/verifications", json={"phone": PHONE}
            )
        assert status == 202, view
        await _printed_code(process.stdout)
    finally:
        assert await process.stop() == 0
