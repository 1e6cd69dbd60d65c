"""TwilioSender's requests, and our fake Twilio's replies, against Twilio's own OpenAPI spec.

Prism mocks the spec: it answers 201 with the spec's example when a request fits the operation,
401 when it lacks basic auth and 422 when it breaks the schema, so a success here means Twilio
would accept the request's shape. In proxy mode, in front of `tests.support.twilio`, Prism also
checks the fake's replies, so the fake cannot drift from what the SDK meets in production. With
`--errors` a reply that breaks the spec becomes a 500.
"""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config import Secret, SmsSettings
from service.errors import SmsRejected
from service.sms.twilio import TwilioSender
from tests.support.process import free_port

pytestmark = pytest.mark.slow  # Prism, and the fake Twilio as a process

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO.parent / "shared/twilio/twilio_api_v2010.json"
PRISM = REPO / ".tools/prism/node_modules/.bin/prism"

#: Prism checks the path and the SIDs against the spec's patterns, so these must look real.
ACCOUNT_SID = "AC" + "a" * 32
SERVICE_SID = "MG" + "a" * 32
TO = "+14155550123"


def wait_until_answering(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Wait for any HTTP answer from `url`; fail with the log if the process dies or stalls."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{log.stem} exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{log.stem} did not answer within 30 s:\n{log.read_text()[-2000:]}")


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prism(mode: list[str], port: int) -> list[str]:
    if not PRISM.exists():
        pytest.fail(f"Prism is not installed at {PRISM}; `make test` installs it.")
    if not SPEC.exists():
        pytest.fail(f"Twilio's OpenAPI spec is not at {SPEC}.")
    return [str(PRISM), *mode, "--errors", "-h", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """Base URLs of Prism mocking Twilio, of our fake Twilio, and of Prism proxying to it."""
    logs = tmp_path_factory.mktemp("contract")
    ports = {"mock": free_port(), "fake": free_port(), "proxy": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    commands = {
        "mock": prism(["mock", str(SPEC)], ports["mock"]),
        "fake": [sys.executable, "-m", "tests.support.twilio", "--port", str(ports["fake"])],
        "proxy": prism(["proxy", str(SPEC), urls["fake"]], ports["proxy"]),
    }
    # All start at once: Prism takes a few seconds to read the 1.9 MB spec.
    processes = {name: start(args, logs / f"{name}.log") for name, args in commands.items()}
    try:
        for name, process in processes.items():
            wait_until_answering(process, urls[name], logs / f"{name}.log")
        yield urls["mock"], urls["fake"], urls["proxy"]
    finally:
        stop(*processes.values())


async def send(base_url: str, **changes: Any) -> str:
    settings = SmsSettings(
        sender="twilio",
        account_sid=ACCOUNT_SID,
        auth_token=Secret("contract-test-token"),
        api_base_url=base_url,
        timeout_seconds=5.0,
    )
    twilio = TwilioSender(dataclasses.replace(settings, **changes))
    try:
        return await twilio.send(TO, "Your verification code is 123456.")
    finally:
        await twilio.close()


@pytest.mark.parametrize(
    "sender", [{"from_number": "+15005550006"}, {"messaging_service_sid": SERVICE_SID}]
)
async def test_requests_fit_twilios_contract(
    servers: tuple[str, str, str], sender: dict[str, str]
) -> None:
    mock_url, _, _ = servers

    sid = await send(mock_url, **sender)

    assert sid.startswith("SM") and len(sid) == 34


@pytest.mark.parametrize(
    "sender",
    [
        {"from_number": "+15005550006", "account_sid": "AC-not-an-account-sid"},
        {"messaging_service_sid": "MG-not-a-service-sid"},
    ],
)
async def test_a_request_breaking_the_contract_is_refused(
    servers: tuple[str, str, str], sender: dict[str, str]
) -> None:
    """The negative control: the same path fails when the request does not fit the spec."""
    mock_url, _, _ = servers

    with pytest.raises(SmsRejected, match=r"^twilio 422: "):
        await send(mock_url, **sender)


async def test_prism_demands_basic_auth_and_a_to(servers: tuple[str, str, str]) -> None:
    mock_url, _, _ = servers
    url = f"{mock_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = {"Authorization": "Basic " + base64.b64encode(f"{ACCOUNT_SID}:t".encode()).decode()}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data={"To": TO, "From": "+15005550006", "Body": "hi"}) as r:
            assert r.status == 401, await r.text()
        async with http.post(url, data={"From": "+15005550006", "Body": "hi"}, headers=auth) as r:
            assert r.status == 422, await r.text()
            assert "'To'" in await r.text()


@pytest.mark.parametrize(
    "sender", [{"from_number": "+15005550006"}, {"messaging_service_sid": SERVICE_SID}]
)
async def test_fake_twilio_answers_within_the_contract(
    servers: tuple[str, str, str], sender: dict[str, str]
) -> None:
    _, fake_url, proxy_url = servers

    sid = await send(proxy_url, **sender)

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{fake_url}/_test/messages", params={"to": TO}) as r,
    ):
        recorded = await r.json()
    assert sid in [m["sid"] for m in recorded]
    assert recorded[-1]["code"] == "123456"
