"""scripts/durable-lab.sh, the lab's curl sequence, against the service as a process."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.support.api import API_KEY
from tests.support.process import ROOT, ServiceProcess
from tests.support.twilio import TwilioServer

pytestmark = pytest.mark.slow

PHONE = "+14155550100"


@pytest.mark.parametrize("sms", ["console", "twilio"])
async def test_the_lab_script_approves(tmp_path: Path, twilio: TwilioServer, sms: str) -> None:
    log = tmp_path / "service.log"
    env = {
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_SMS_SENDER": sms,
    }
    if sms == "twilio":
        env |= {
            "VERIFY_SMS_ACCOUNT_SID": twilio.account_sid,
            "VERIFY_SMS_AUTH_TOKEN": twilio.auth_token,
            "VERIFY_SMS_FROM_NUMBER": "+15005550006",
            "VERIFY_SMS_API_BASE_URL": twilio.base_url,
        }
    # The code from the console's lines in the service's output, or from the fake Twilio.
    source = {"SMS_LOG": str(log)} if sms == "console" else {"TWILIO": twilio.base_url}
    service = ServiceProcess(env, log)
    await service.start()
    try:
        script = await asyncio.create_subprocess_exec(
            str(ROOT / "scripts" / "durable-lab.sh"),
            PHONE,
            env={**os.environ, "BASE": service.url, "KEY": API_KEY, **source},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(script.communicate(), 60)
    finally:
        await service.stop()

    assert script.returncode == 0, (out.decode(), err.decode(), service.logs())
    text = out.decode()
    assert "HTTP/1.1 202 Accepted" in text
    assert '"runtimeStatus":"Completed"' in text and '"output":true' in text
    assert "/raiseEvent/SmsChallengeResponse?" in err.decode()
