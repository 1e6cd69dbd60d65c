"""The service as a real process: started with `python -m service`, killed as a crash would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """`python -m service` with settings from environment variables (VERIFY_*)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "VERIFY_SERVER_PORT": str(self.port)}
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "--config",
            str(ROOT / "config.toml"),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        await self.wait_healthy(timeout)

    async def wait_healthy(self, timeout: float) -> None:  # noqa: ASYNC109
        assert self.process is not None
        async with aiohttp.ClientSession() as session:
            for _ in range(int(timeout / 0.05)):
                if self.process.returncode is not None:
                    raise RuntimeError(f"service exited {self.process.returncode}: {self.logs()}")
                try:
                    async with session.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"service did not answer within {timeout} s: {self.logs()}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        """SIGTERM, the graceful way; returns the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 15)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def request(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as r:
        return r.status, await r.json()


def run_to_exit(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m service` in `cwd` with only `env` for settings, run until it exits by itself:
    for starts that must be refused."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VERIFY_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "service"],
        # This checkout's service, even where the one installed is another's (a worktree's).
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
