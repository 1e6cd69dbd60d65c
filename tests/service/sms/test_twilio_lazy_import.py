"""The Twilio sender's SDK, imported on the first send: what a bad day does to it.

The SDK is imported once per process, so every test here runs the sender in a fresh process
(`python -c`), where `twilio` is not imported yet, against the fake Twilio of this one. An SDK that
cannot be imported is simulated with a `sitecustomize` on the child's PYTHONPATH that refuses
`requests` (which the twilio SDK imports) while a flag file exists, or holds it up.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.api import API_KEY, AUTH
from tests.support.process import ROOT, ServiceProcess
from tests.support.twilio import TwilioServer

pytestmark = pytest.mark.slow  # each test starts a process

SHIM = """
import importlib.abc, os, sys, time

class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "requests":
            if os.path.exists(os.environ.get("SHIM_FAIL", "/nonexistent")):
                raise ImportError("No module named 'requests' (a broken install)")
            if os.path.exists(os.environ.get("SHIM_HANG", "/nonexistent")):
                time.sleep(float(os.environ.get("SHIM_HANG_SECONDS", "30")))
        return None

sys.meta_path.insert(0, _Refuse())
"""

#: Runs in the child: the sender, its `scenario` (a coroutine of `sender` and `twilio_url`), and
#: one JSON line of what it returned, or of the error that escaped it (class and MRO).
CHILD = """
import asyncio, json, os, sys
from service.config import Secret, SmsSettings
from service.sms.twilio import TwilioSender

def describe(x):
    if isinstance(x, BaseException):
        return {{"error": type(x).__name__, "mro": [c.__name__ for c in type(x).__mro__],
                 "text": str(x)}}
    return x

async def send(sender, to):
    try:
        return await sender.send(to, "code 123456")
    except BaseException as exc:
        return describe(exc)

{scenario}

async def main():
    assert "twilio" not in sys.modules, "the SDK must not be imported yet"
    sender = TwilioSender(SmsSettings(
        sender="twilio", account_sid="AC" + "0" * 32, auth_token=Secret("test-auth-token"),
        from_number="+15005550006", api_base_url=os.environ["TWILIO_URL"],
        timeout_seconds=float(os.environ.get("TIMEOUT", "2"))))
    try:
        result = await scenario(sender)
    finally:
        await sender.close()
    print(json.dumps(result))

asyncio.run(main())
"""


async def run_child(tmp_path: Path, twilio: TwilioServer, scenario: str, **env: str) -> Any:
    (tmp_path / "shim").mkdir(exist_ok=True)
    (tmp_path / "shim" / "sitecustomize.py").write_text(SHIM)
    code = CHILD.format(scenario=textwrap.dedent(scenario))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{ROOT}",
            "TWILIO_URL": twilio.base_url,
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_many_first_sends_share_one_import_and_all_go_out(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    results = await run_child(
        tmp_path,
        twilio,
        """
        async def scenario(sender):
            return await asyncio.gather(*(send(sender, f"+1415555{i:04d}") for i in range(300)))
        """,
    )
    assert all(isinstance(r, str) and r.startswith("SM") for r in results), results[:3]
    assert len(twilio.messages) == 300


async def test_a_send_timed_out_during_the_import_leaves_it_to_the_others(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    results = await run_child(
        tmp_path,
        twilio,
        """
        async def impatient(sender):
            try:
                async with asyncio.timeout(0.001):
                    return await sender.send("+14155550100", "code 1")
            except TimeoutError:
                return "timed out"

        async def scenario(sender):
            both = await asyncio.gather(impatient(sender), send(sender, "+14155550101"))
            return [*both, await send(sender, "+14155550102")]
        """,
    )
    assert results[0] == "timed out"
    assert all(isinstance(r, str) and r.startswith("SM") for r in results[1:]), results


async def test_a_close_during_the_import_does_not_break_the_sends_after_it(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    # A close does not cancel the import others wait on, nor break a send after it.
    results = await run_child(
        tmp_path,
        twilio,
        """
        async def scenario(sender):
            early = asyncio.create_task(send(sender, "+14155550100"))
            await asyncio.sleep(0.001)  # the import is under way
            await sender.close()
            return [await early, await send(sender, "+14155550101")]
        """,
    )
    in_flight, later = results
    # The send caught by the close may fail, but as an SMS error (or Exception), never by a
    # CancelledError its caller did not ask for: that passes `except Exception` in orchestrator.
    if isinstance(in_flight, dict):
        assert "Exception" in in_flight["mro"], in_flight
    assert isinstance(later, str) and later.startswith("SM"), later
    assert twilio.messages_to("+14155550101")


async def test_an_sdk_that_fails_to_import_is_an_sms_error_and_is_tried_again(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    # An SMS failure the challenge retries (SmsUnavailable), not an ImportError that would end
    # the verification at once; and the import is tried again by the next send.
    flag = tmp_path / "fail"
    flag.touch()
    results = await run_child(
        tmp_path,
        twilio,
        f"""
        async def scenario(sender):
            failed = await asyncio.gather(*(send(sender, "+14155550100") for _ in range(3)))
            os.remove({str(flag)!r})  # the install is mended
            return [*failed, await send(sender, "+14155550101")]
        """,
        SHIM_FAIL=str(flag),
    )
    *failed, mended = results
    assert isinstance(mended, str) and mended.startswith("SM"), mended
    for error in failed:
        assert isinstance(error, dict) and "SmsUnavailable" in error["mro"], error


async def test_a_slow_import_is_bounded_by_the_senders_timeout(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    # The first send's time-out covers its wait for the import too.
    flag = tmp_path / "hang"
    flag.touch()
    result, took = await run_child(
        tmp_path,
        twilio,
        """
        import time
        async def scenario(sender):
            began = time.monotonic()
            result = await send(sender, "+14155550100")
            return [result, time.monotonic() - began]
        """,
        SHIM_HANG=str(flag),
        SHIM_HANG_SECONDS="6",
        TIMEOUT="1",
    )
    assert took < 5, f"a send with a 1 s time-out took {took:.1f} s (result {result})"


def _service_env(tmp_path: Path, twilio: TwilioServer, **extra: str) -> dict[str, str]:
    (tmp_path / "shim").mkdir(exist_ok=True)
    (tmp_path / "shim" / "sitecustomize.py").write_text(SHIM)
    return {
        "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{ROOT}",
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        **twilio.sender_env,
        "VERIFY_SMS_RETRY_DELAYS": "0.05,0.1",
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_ENABLED": "false",
        **extra,
    }


async def test_the_service_starts_and_sends_its_first_sms_through_twilio(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    service = ServiceProcess(_service_env(tmp_path, twilio), tmp_path / "service.log")
    await service.start()
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.post(
                f"{service.url}/verifications", json={"phone": "+14155550100"}, headers=AUTH
            )
            assert r.status == 202, await r.text()
            await twilio.wait_for_message("+14155550100", timeout=10)
    finally:
        assert await service.stop() == 0, service.logs()


async def test_a_service_whose_twilio_sdk_cannot_be_loaded_is_not_ready_until_it_can(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    # Installed but broken (a dependency missing): alive, not ready and saying why, each SMS an
    # SMS failure (retried, then the verification fails with the reason); mended, ready again.
    flag = tmp_path / "fail"
    flag.touch()
    env = _service_env(tmp_path, twilio, SHIM_FAIL=str(flag))
    service = ServiceProcess(env, tmp_path / "service.log")
    await service.start(timeout=10)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{service.url}/readyz") as r:
                assert (r.status, (await r.json())["checks"]["sms"]) == (503, "failing")
            r = await http.post(
                f"{service.url}/verifications", json={"phone": "+14155550100"}, headers=AUTH
            )
            view = await r.json()
            for _ in range(100):
                async with http.get(
                    f"{service.url}/verifications/{view['id']}", headers=AUTH
                ) as got:
                    view = await got.json()
                if view["status"] != "pending":
                    break
                await asyncio.sleep(0.05)
            assert view["status"] == "failed", view
            assert "twilio SDK could not be loaded" in view["reason"], view
            assert not twilio.messages

            flag.unlink()  # the install is mended
            for _ in range(100):
                async with http.get(f"{service.url}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200, await r.text()
            r = await http.post(
                f"{service.url}/verifications", json={"phone": "+14155550101"}, headers=AUTH
            )
            assert r.status == 202, await r.text()
            await twilio.wait_for_message("+14155550101", timeout=10)
    finally:
        assert await service.stop() == 0, service.logs()
