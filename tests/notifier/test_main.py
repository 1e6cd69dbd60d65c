"""`python -m notifier`, run for real as a subprocess against LocalStack."""

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

from notifier.events import outcome_body, sign
from notifier.queues import SqsClient, dead_letter_name
from notifier.settings import QueueSettings
from tests.support.localstack import REGION, queue_depth

ROOT = Path(__file__).resolve().parents[2]


def body(verification_id: str) -> str:
    return outcome_body(
        id=verification_id,
        status="expired",
        to="+14155550100",
        reference=None,
        attempts=0,
        created_at="2026-01-01T00:00:00Z",
        completed_at="2026-01-01T00:01:30Z",
        reason=None,
    )


async def notifier(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    # Its own folder, so a config.toml of the checkout is not picked up; this checkout's code,
    # whichever copy is installed.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifier",
        *args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_prints_each_outcome_as_a_json_line_and_exits_0_on_sigterm(
    sqs_client: SqsClient, queue_settings: QueueSettings, localstack_endpoint: str, tmp_path: Path
) -> None:
    await sqs_client.send_message(QueueUrl=queue_settings.url, MessageBody=body("ver_cli"))
    process = await notifier(
        tmp_path,
        *("--queue-url", queue_settings.url, "--endpoint-url", localstack_endpoint),
        *("--region", REGION),
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
    finally:
        returncode, stderr = await stop(process)

    assert json.loads(line) == json.loads(body("ver_cli")), stderr
    assert returncode == 0, stderr
    assert await queue_depth(sqs_client, queue_settings.url) == 0


async def test_with_the_signing_key_in_its_environment_prints_only_signed_outcomes(
    sqs_client: SqsClient, queue_settings: QueueSettings, localstack_endpoint: str, tmp_path: Path
) -> None:
    key, url = "cli-signing-key", queue_settings.url
    await sqs_client.send_message(QueueUrl=url, MessageBody=body("ver_unsigned"))
    signed = body("ver_signed")
    signature = {"signature": {"DataType": "String", "StringValue": sign(key, signed)}}
    await sqs_client.send_message(QueueUrl=url, MessageBody=signed, MessageAttributes=signature)
    process = await notifier(
        tmp_path,
        *("--queue-url", url, "--endpoint-url", localstack_endpoint, "--region", REGION),
        *("--wait-seconds", "1"),
        env={"VERIFY_QUEUE_SIGNING_KEY": key},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        # Both were received by now, or soon: give the unsigned one its turn to be refused.
        await asyncio.sleep(1.5)
    finally:
        returncode, stderr = await stop(process)

    assert json.loads(line)["id"] == "ver_signed", stderr
    assert returncode == 0, stderr
    assert "is not signed" in stderr
    # Not deleted: it comes back after its visibility timeout, until the DLQ takes it.
    assert await queue_depth(sqs_client, url) == 1


async def test_reads_the_queue_from_config_and_creates_it(
    sqs_client: SqsClient, localstack_endpoint: str, tmp_path: Path
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "settings.toml"
    config.write_text(f'[queue]\nname = "{name}"\nendpoint_url = "{localstack_endpoint}"\n')
    process = await notifier(tmp_path, "--config", str(config), "--create", "--wait-seconds", "1")
    try:
        url = await created(sqs_client, name)
        await sqs_client.send_message(QueueUrl=url, MessageBody=body("ver_config"))
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        assert json.loads(line)["id"] == "ver_config"
    finally:
        returncode, stderr = await stop(process)
        for queue in (name, dead_letter_name(name)):
            if queue_url := await existing(sqs_client, queue):
                await sqs_client.delete_queue(QueueUrl=queue_url)
    assert returncode == 0, stderr


async def test_missing_queue_is_an_error_naming_it(
    sqs_client: SqsClient, localstack_endpoint: str, tmp_path: Path
) -> None:
    process = await notifier(tmp_path, "--endpoint-url", localstack_endpoint)
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 1
    assert "Queue 'verification-outcomes' does not exist" in stderr.decode()


async def created(client: SqsClient, name: str) -> str:
    for _ in range(100):
        if url := await existing(client, name):
            return url
        await asyncio.sleep(0.1)
    raise AssertionError(f"queue {name} was not created")


async def existing(client: SqsClient, name: str) -> str | None:
    response = await client.list_queues(QueueNamePrefix=name)
    urls = [u for u in response.get("QueueUrls", []) if u.endswith(f"/{name}")]
    return urls[0] if urls else None
