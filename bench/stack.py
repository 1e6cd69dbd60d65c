"""Everything a benchmark runs against, each in its own process, all on 127.0.0.1.

LocalStack is started with `scripts/localstack.sh` on a free port (or reused from
`LOCALSTACK_ENDPOINT`), the fake Twilio with `python -m bench.twilio`, and the service with
`python -m service` and its real configuration: a SQLite file on disk, the outbox publishing to a
fresh SQS queue, the twilio SDK sending to the fake Twilio. Every wait has a deadline, and every
process started here is stopped here, by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.resources import Usage, usage
from notifier.queues import SqsClient, create_queue, dead_letter_name, queue_url, sqs_client
from notifier.settings import QueueSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LOCALSTACK_SCRIPT = ROOT / "scripts" / "localstack.sh"
REGION = "us-east-1"
API_KEY = "bench-key-0123456789"
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"
FROM_NUMBER = "+15005550006"
#: High enough never to refuse a benchmark's start, low enough to stay a real setting.
NO_LIMIT = 1_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    """Progress, on stderr: stdout carries only the tables and the JSON results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _run_script(*args: str, env: dict[str, str], timeout: float) -> None:  # noqa: ASYNC109
    # Output to a file, not a pipe: the LocalStack it starts would hold a pipe open for its life.
    with tempfile.TemporaryFile() as out:
        process = await asyncio.create_subprocess_exec(
            str(LOCALSTACK_SCRIPT), *args, env=env, cwd=ROOT, stdout=out, stderr=out
        )
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TimeoutError(
                f"scripts/localstack.sh {' '.join(args)} took over {timeout:g} s"
            ) from None
        if process.returncode != 0:
            out.seek(0)
            output = out.read().decode(errors="replace")
            raise RuntimeError(f"scripts/localstack.sh {' '.join(args)} failed:\n{output}")


@dataclass(frozen=True)
class LocalStack:
    endpoint: str
    #: None when it was started by someone else.
    pid: int | None


@contextlib.asynccontextmanager
async def localstack(state: Path) -> AsyncIterator[LocalStack]:
    """LocalStack ready for SQS: `LOCALSTACK_ENDPOINT`'s, or one started here and stopped after."""
    external = os.environ.get("LOCALSTACK_ENDPOINT", "").rstrip("/")
    if external:
        log(f"using LocalStack at {external}")
        yield LocalStack(external, None)
        return
    port = free_port()
    # A state folder of its own keeps the script's pid file apart from any other LocalStack.
    env = {**os.environ, "LOCALSTACK_STATE": str(state)}
    log(f"starting LocalStack on port {port}")
    try:
        # Inside the try: a start that fails half-way may still have left a LocalStack running.
        await _run_script("start", str(port), env=env, timeout=30)
        await _run_script("wait", str(port), env=env, timeout=120)
        pid = int((state / "localstack.pid").read_text())
        log(f"LocalStack (pid {pid}) is ready")
        yield LocalStack(f"http://127.0.0.1:{port}", pid)
    finally:
        await _run_script("stop", env=env, timeout=30)


class Process:
    """A child process with its output in a log file, stopped by pid."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.started_wall = 0.0
        #: Set once the process exists, for watchers that must attach from its first moment.
        self.spawned = asyncio.Event()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def spawn(self, args: list[str], env: dict[str, str]) -> None:
        with self.log_path.open("ab") as out:
            self.started_at = time.perf_counter()
            self.started_wall = time.time()
            self.process = await asyncio.create_subprocess_exec(
                *args, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.spawned.set()

    def usage(self) -> Usage:
        return usage(self.pid)

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if not self.running():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            log(f"{self.name} ignored SIGTERM for {timeout:g} s; killing it")
            await self.kill()

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_http(self, url: str, timeout: float, interval: float = 0.01) -> float:  # noqa: ASYNC109
        """Poll `url` until it answers 200; returns the seconds since the process was spawned."""
        deadline = time.perf_counter() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.perf_counter() < deadline:
                if not self.running():
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as r:
                        if r.status == 200:
                            return time.perf_counter() - self.started_at
                await asyncio.sleep(interval)
        raise TimeoutError(f"{self.name} did not answer {url} within {timeout:g} s:\n{self.tail()}")


class Twilio(Process):
    def __init__(self, log_path: Path) -> None:
        super().__init__("fake Twilio", log_path)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.spawn(
            [sys.executable, "-m", "bench.twilio", "--port", str(self.port)], dict(os.environ)
        )
        await self.wait_http(f"{self.url}/_bench/count", timeout=30)


#: What runs as the service: ours, or a peer written on another library (bench/peers/).
COMMANDS = {
    "ours": ["-m", "service", "--config", str(ROOT / "config.toml")],
    "dbos": ["-m", "bench.peers.dbos"],
}


class Service(Process):
    """`python -m service` configured through VERIFY_* variables, as in production.

    `implementation` names another command of `COMMANDS`, given the same environment.
    """

    def __init__(
        self, name: str, log_path: Path, env: dict[str, str], implementation: str = "ours"
    ) -> None:
        super().__init__(name, log_path)
        self.port = free_port()
        self.env = {**env, "VERIFY_SERVER_PORT": str(self.port)}
        self.implementation = implementation
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 120.0) -> float:  # noqa: ASYNC109
        """Start and wait for /healthz; returns the seconds from spawn until it answered."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        await self.spawn([sys.executable, *COMMANDS[self.implementation]], self.env)
        return await self.wait_http(f"{self.url}/healthz", timeout)

    async def wait_log(self, prefix: str, timeout: float) -> tuple[float, dict[str, Any]]:  # noqa: ASYNC109
        """Wait for a JSON log line of this run whose message starts with `prefix`.

        Returns the seconds from spawn until it was logged, by its own timestamp (so reading it
        late does not count), and the line.
        """
        deadline = time.perf_counter() + timeout
        offset, pending = self._log_offset, b""
        while time.perf_counter() < deadline:
            chunk = b""
            with contextlib.suppress(FileNotFoundError), self.log_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError, KeyError):
                    entry = json.loads(line)
                    if str(entry.get("message", "")).startswith(prefix):
                        logged = datetime.fromisoformat(entry["time"]).timestamp()
                        return logged - self.started_wall, entry
            if not self.running():
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            await asyncio.sleep(0.005)
        raise TimeoutError(f"{self.name} logged no {prefix!r} within {timeout:g} s")


@dataclass
class Stack:
    """LocalStack, the fake Twilio, a fresh queue, and a factory for service processes."""

    name: str
    workdir: Path
    localstack: LocalStack
    twilio: Twilio
    queue: QueueSettings
    sqs: SqsClient
    services: list[Service] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return RESULTS / "logs"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used so far by each process of the benchmark, to show where the cores went."""
        pids = {"driver": os.getpid(), "fake_twilio": self.twilio.pid}
        if self.localstack.pid is not None:
            pids["localstack"] = self.localstack.pid
        running = [s for s in self.services if s.running()]
        if running:
            pids["service"] = running[-1].pid
        found = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                found[name] = usage(pid).cpu_seconds
        return found

    def service_env(self, ttl_seconds: float) -> dict[str, str]:
        # None of the caller's VERIFY_*, TWILIO_* or AWS_* settings leaks in: this is the config.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("VERIFY_", "TWILIO_", "AWS_"))
        }
        env |= {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "VERIFY_SERVER_HOST": "127.0.0.1",
            "VERIFY_DATABASE_PATH": str(self.workdir / "verifications.db"),
            "VERIFY_VERIFICATION_TTL_SECONDS": str(ttl_seconds),
            "VERIFY_SMS_SENDER": "twilio",
            "VERIFY_SMS_ACCOUNT_SID": ACCOUNT_SID,
            "VERIFY_SMS_AUTH_TOKEN": AUTH_TOKEN,
            "VERIFY_SMS_FROM_NUMBER": FROM_NUMBER,
            "VERIFY_SMS_API_BASE_URL": self.twilio.url,
            "VERIFY_QUEUE_ENDPOINT_URL": self.localstack.endpoint,
            "VERIFY_QUEUE_REGION": REGION,
            "VERIFY_QUEUE_NAME": self.queue.name,
            "VERIFY_QUEUE_CREATE": "true",
            "VERIFY_AUTH_API_KEYS": API_KEY,
            # The defaults (600 starts a minute per key, 6000 SMS a minute) would refuse the load.
            "VERIFY_LIMITS_STARTS_PER_KEY_PER_MINUTE": str(NO_LIMIT),
            "VERIFY_LIMITS_SMS_PER_MINUTE": str(NO_LIMIT),
        }
        return env

    async def start_service(
        self,
        ttl_seconds: float,
        timeout: float = 120.0,  # noqa: ASYNC109
        implementation: str = "ours",
        database: Path | None = None,
    ) -> tuple[Service, float]:
        """A new service process on the same database (or `database`); returns it and its
        seconds to /healthz."""
        service = self.new_service(ttl_seconds, implementation, database)
        seconds = await service.start(timeout)
        log(f"{service.name} (pid {service.pid}) answers on {service.url} after {seconds:.2f} s")
        return service, seconds

    def new_service(
        self, ttl_seconds: float, implementation: str = "ours", database: Path | None = None
    ) -> Service:
        """A service process not started yet, for whoever must watch it from its first moment."""
        number = len(self.services) + 1
        env = self.service_env(ttl_seconds)
        if database is not None:
            env["VERIFY_DATABASE_PATH"] = str(database)
        kind = "service" if implementation == "ours" else f"{implementation} peer"
        service = Service(
            f"{kind} #{number}",
            self.logs / f"{self.name}-service-{number}.log",
            env,
            implementation,
        )
        self.services.append(service)
        return service


@contextlib.asynccontextmanager
async def stack(name: str, sqs_server: LocalStack) -> AsyncIterator[Stack]:
    """Start what benchmark `name` needs; stop it all on the way out, whatever happened."""
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob(f"{name}-*.log"):
        old.unlink()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    twilio = Twilio(logs / f"{name}-twilio.log")
    services: list[Service] = []
    try:
        await twilio.start()
        queue = QueueSettings(
            name=f"bench-{name}-{uuid.uuid4().hex[:8]}",
            endpoint_url=sqs_server.endpoint,
            region=REGION,
            create=True,
        )
        async with sqs_client(queue) as sqs:
            url = await create_queue(sqs, queue)
            try:
                yield Stack(
                    name, workdir, sqs_server, twilio, replace(queue, url=url), sqs, services
                )
            finally:
                await _delete_queues(sqs, queue.name)
    finally:
        for service in services:
            await service.stop()
        await twilio.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _delete_queues(sqs: SqsClient, name: str) -> None:
    """Matters only on a reused LocalStack; one started here goes away with its queues."""
    for each in (name, dead_letter_name(name)):
        with contextlib.suppress(Exception):
            await sqs.delete_queue(QueueUrl=await queue_url(sqs, each))
