"""py-spy attached to the service while a benchmark loads it: a flame graph and the top functions.

Only samples of the thread holding the GIL are kept (`--gil`): what Python code spends the
interpreter on. Threads waiting for the GIL or for their queue would otherwise pass for busy ones,
and SQLite's own work, done with the GIL released, is invisible here; the per-thread CPU read from
/proc shows it instead. Sampling is non-blocking (the service is never paused); still, the
throughput benchmark profiles a run of its own and reports the unprofiled ones.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from bench import stats
from bench.stack import log

RATE = 250


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """Records `pid` while open, one py-spy per output: `{"flamegraph": path, "raw": path}`.

    A process just spawned may not be a Python interpreter py-spy recognises yet; attaching is
    retried until it holds, for up to `attach_seconds`.
    """

    def __init__(self, pid: int, outputs: dict[str, Path], attach_seconds: float = 5.0) -> None:
        self.pid = pid
        self.outputs = outputs
        self.attach_seconds = attach_seconds
        self._processes: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Profiler:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        for fmt, path in self.outputs.items():
            self._processes.append(await self._attach(binary, fmt, path))
        return self

    async def _attach(self, binary: str, fmt: str, path: Path) -> asyncio.subprocess.Process:
        deadline = time.perf_counter() + self.attach_seconds
        while True:
            process = await asyncio.create_subprocess_exec(
                *(binary, "record", "--nonblocking", "--gil", "--rate", str(RATE)),
                *("--format", fmt, "--output", str(path), "--pid", str(self.pid)),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await asyncio.wait_for(process.wait(), 0.2)
            except TimeoutError:
                return process  # still sampling: attached
            if time.perf_counter() > deadline:
                error = (await process.stderr.read()).decode() if process.stderr else ""
                raise RuntimeError(f"py-spy could not attach to {self.pid}: {error}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # SIGINT makes py-spy stop sampling and write what it has.
        for process in self._processes:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
            if process.returncode not in (0, -signal.SIGINT) and process.stderr is not None:
                log(f"py-spy exited {process.returncode}: {(await process.stderr.read()).decode()}")


#: Inclusive shares are given for this project's functions: where its own code spends the time.
PROJECT = ("service/", "notifier/")


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples, this project's by samples inside them, packages by own.

    Functions are told apart by name and file, not line: `send (aiohttp/client.py)`.
    """
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(raw):
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            if _package(frame).startswith(PROJECT) and not frame.endswith("__main__.py)"):
                inside[frame] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "own": share(own),
        "inclusive": share(inside),
        "own_by_package": share(packages),
    }


def per_verification(raw: Path, completed: int, top: int = 12) -> dict[str, float]:
    """Milliseconds of samples per verification, by package, the most first: runs of different
    sizes and rates side by side (py-spy takes `RATE` samples a second of the GIL's holder)."""
    packages: Counter[str] = Counter()
    for frames, count in _samples(raw):
        packages[_package(frames[-1])] += count
    ms = 1000 / RATE / max(1, completed)
    total = {"all": round(sum(packages.values()) * ms, 3)}
    return total | {name: round(n * ms, 3) for name, n in packages.most_common(top)}


def compared(saturated: dict[str, float], half: dict[str, float]) -> str:
    """The two runs' milliseconds per verification by package, and how much more at half load."""
    rows = [
        [name, ms, half.get(name, "-"), f"{half[name] / ms:.1f}x" if name in half and ms else "-"]
        for name, ms in saturated.items()
    ]
    headers = ["package (own time)", "ms/verification, saturation", "half load", "ratio"]
    return stats.table(headers, rows)


def _samples(raw: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw lines: each stack's functions, outermost first, and its sample count."""
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_function(f) for f in stack.split(";") if f.endswith(")")]
        if frames:
            yield frames, int(count_text)


def _function(frame: str) -> str:
    """`send (aiohttp/client.py:123)` -> `send (aiohttp/client.py)`."""
    name, _, location = frame.rpartition(" (")
    return f"{name} ({location.rstrip(')').rpartition(':')[0] or location.rstrip(')')})"


def _package(function: str) -> str:
    """`send (aiohttp/client.py)` -> `aiohttp`; this project's modules by file."""
    path = function.rpartition(" (")[2].rstrip(")")
    if path.startswith("<frozen "):
        return path.removeprefix("<frozen ").rstrip(">")
    parts = Path(path).parts
    if parts and parts[0] in ("service", "notifier", "bench"):
        return path
    return parts[0].removesuffix(".py") if parts else path


def table(profile: dict[str, Any], top: int = 12) -> str:
    """The summary side by side: own time, this project's inclusive time, packages' own time."""
    columns = [profile["own"], profile["inclusive"], profile["own_by_package"]]
    rows = [
        [i + 1]
        + [f"`{c[i]['function']}` {c[i]['percent']}%" if i < len(c) else "" for c in columns[:2]]
        + [
            f"{columns[2][i]['function']} {columns[2][i]['percent']}%"
            if i < len(columns[2])
            else ""
        ]
        for i in range(top)
    ]
    headers = ["#", "own time", "inclusive time (this project)", "own time by package"]
    return stats.table(headers, rows)
