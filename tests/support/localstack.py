"""LocalStack for the tests: one instance for the whole run, a fresh queue for each test.

Fixtures (register with `pytest_plugins = ["tests.support.localstack"]`):

- `localstack_endpoint` (session): "http://127.0.0.1:PORT". `LOCALSTACK_ENDPOINT` names a running
  instance to use; otherwise one is started from `.venv-localstack` on a free port.
- `sqs_client`: an SQS client for it. Sets `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` to "test"
  for the test, so subprocesses it starts reach LocalStack too.
- `queue_settings`, `fifo_queue_settings`: `QueueSettings` of a new queue, with `url` set, a
  dead-letter queue after 2 receives and short retry delays; deleted after the test.
- `sqs_proxy`: a `TcpProxy` in front of LocalStack, to cut SQS off and bring it back.

Every test that uses LocalStack, through any of them, is marked `slow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from notifier import queues
from notifier.queues import SqsClient, dead_letter_name, resolve_queue_url
from notifier.settings import QueueSettings
from tests.support.process import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCALSTACK_PYTHON = ROOT / ".venv-localstack" / "bin" / "python"
START_TIMEOUT = 90.0
REGION = "us-east-1"

#: LocalStack's environment, shared with scripts/localstack.sh; that file says why each is set.
LOCALSTACK_ENV_FILE = ROOT / "scripts" / "localstack.env"


def localstack_env(port: int, state: Path) -> dict[str, str]:
    """The variables LocalStack is started with: the shared file's, then the per-instance ones."""
    env = {"GATEWAY_LISTEN": f"127.0.0.1:{port}", "FILESYSTEM_ROOT": str(state / "filesystem")}
    for line in LOCALSTACK_ENV_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # By its fixtures, so that no test can need LocalStack and still run in the fast part.
    for item in items:
        if "localstack_endpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def healthy(endpoint: str) -> bool:
    """True once LocalStack's health check says SQS can take requests."""
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as response:
            status = json.load(response)["services"].get("sqs")
    except (OSError, ValueError, KeyError):
        return False
    return status in ("available", "running")


@pytest.fixture(scope="session")
def localstack_endpoint() -> Iterator[str]:
    # Sync on purpose: the subprocess is managed synchronously, and a session-scoped async
    # fixture would need a session-scoped event loop too.
    external = os.environ.get("LOCALSTACK_ENDPOINT", "").rstrip("/")
    if external:
        if not healthy(external):
            pytest.fail(f"LOCALSTACK_ENDPOINT={external} does not report SQS ready.", pytrace=False)
        yield external
        return
    if not LOCALSTACK_PYTHON.exists():
        pytest.fail(
            f"LocalStack is not installed ({LOCALSTACK_PYTHON} is missing); run `make test`, "
            "which installs it, or `scripts/localstack.sh install`.",
            pytrace=False,
        )
    with tempfile.TemporaryDirectory(prefix="localstack-") as state:
        yield from _run_localstack(Path(state))


def _run_localstack(state: Path) -> Iterator[str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= localstack_env(port, state)
    log_path = state / "localstack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(LOCALSTACK_PYTHON), "-m", "localstack.runtime.main"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until_healthy(endpoint, process, log_path)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_healthy(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not healthy(endpoint):
        output = log.read_text(errors="replace")
        # Unable to listen, LocalStack still says "Ready." and runs on, never healthy.
        if process.poll() is not None or "CannotListenError" in output:
            problem = "it exited or could not listen"
        elif time.monotonic() > deadline:
            problem = f"not within {START_TIMEOUT:g} s"
        else:
            time.sleep(0.2)
            continue
        tail = "\n".join(output.splitlines()[-40:])
        pytest.fail(
            f"LocalStack on {endpoint} did not get ready: {problem}.\n{tail}", pytrace=False
        )


@pytest.fixture
async def sqs_client(
    localstack_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SqsClient]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    settings = QueueSettings(endpoint_url=localstack_endpoint, region=REGION)
    async with queues.sqs_client(settings) as client:
        yield client


@pytest.fixture
async def queue_settings(
    sqs_client: SqsClient, localstack_endpoint: str, request: pytest.FixtureRequest
) -> AsyncIterator[QueueSettings]:
    async with fresh_queue(sqs_client, localstack_endpoint, request.node.name) as settings:
        yield settings


@pytest.fixture
async def fifo_queue_settings(
    sqs_client: SqsClient, localstack_endpoint: str, request: pytest.FixtureRequest
) -> AsyncIterator[QueueSettings]:
    async with fresh_queue(
        sqs_client, localstack_endpoint, request.node.name, fifo=True
    ) as settings:
        yield settings


@contextlib.asynccontextmanager
async def fresh_queue(
    client: SqsClient, endpoint: str, label: str, *, fifo: bool = False
) -> AsyncIterator[QueueSettings]:
    """A new queue and its DLQ, named after the test so a shared LocalStack stays readable."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", label)[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
    settings = QueueSettings(
        name=name,
        endpoint_url=endpoint,
        region=REGION,
        create=True,
        dead_letter_max_receives=2,
        retry_delays=(0.05, 0.1, 0.2, 0.5),
    )
    url = await resolve_queue_url(client, settings)
    try:
        yield dataclasses.replace(settings, url=url)
    finally:
        dead_letter_url = await queues.queue_url(client, dead_letter_name(name))
        for queue in (url, dead_letter_url):
            await client.delete_queue(QueueUrl=queue)


async def receive_all(
    client: SqsClient, queue_url: str, count: int, *, seconds: float = 10.0, delete: bool = True
) -> list[dict[str, Any]]:
    """Receive until `count` messages came (or more, in the same batch) or `seconds` passed."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(messages) < count and time.monotonic() < deadline:
        response = await client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        batch = response.get("Messages", [])
        messages += batch
        if delete and batch:
            await client.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                ],
            )
    return messages


async def queue_depth(client: SqsClient, queue_url: str) -> int:
    """Messages in the queue, visible or not (SQS's counts are approximate; LocalStack's exact)."""
    response = await client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(v) for v in response["Attributes"].values())


class TcpProxy:
    """A loopback TCP forwarder that can be cut and restored: the server behind it vanishes and
    comes back under the same address, as SQS does in an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again, on the same port once it has one); connections are forwarded."""
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones, kept-alive client connections too."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
        # The forwarding tasks end on their own once their connections are reset.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._writers -= pair
            for each in pair:
                each.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@pytest.fixture
async def sqs_proxy(localstack_endpoint: str) -> AsyncIterator[TcpProxy]:
    """A proxy to LocalStack; point a client at `sqs_proxy.url`, then `cut()` and `restore()`."""
    target = urlsplit(localstack_endpoint)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 4566)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def queue_section(settings: QueueSettings, endpoint: str | None = None) -> dict[str, Any]:
    return {
        "enabled": True,
        "url": settings.url,
        "name": settings.name,
        "endpoint_url": endpoint or settings.endpoint_url,
        "region": settings.region,
        "retry_delays": [0.05, 0.1, 0.2],
    }
