"""What the replicas benchmark's parts share: the session, and replicas started and read.

The throughput part (`bench.replicas`) and the failover part (`bench.failover`) both start
`python -m service` processes on one PostgreSQL database with one code secret, and read their
`/metrics`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import aiohttp

from bench import client
from bench.outcomes import OutcomeListener
from bench.stack import Service, Stack, log

#: The service's defaults: a replica's lease lasts 5 s, and survivors look for lapsed ones every
#: second, so a SIGKILLed replica's verifications should be adopted within their sum.
LEASE_SECONDS = 5.0
CHECK_SECONDS = 1.0
ADOPTED_METRIC = "verifications_adopted_total"
PENDING_METRIC = "verifications_pending"
WAIT_SECONDS = 30.0


@dataclass
class Session:
    """What every part shares: the stack, the HTTP session, the SMS reader, the queue listener."""

    stack: Stack
    http: aiohttp.ClientSession
    sms: client.Sms
    outcomes: OutcomeListener
    #: Every verification approved, to check at the end that each outcome came exactly once.
    approved: set[str] = field(default_factory=set)


def replica_env(url: str, secret: str) -> dict[str, str]:
    # One secret for all: a code derived by the replica that started it is checked by another.
    return {"VERIFY_DATABASE_URL": url, "VERIFY_DATABASE_SECRET": secret}


async def start_replica(s: Stack, env: dict[str, str], ttl: float) -> tuple[Service, float]:
    """A new service process on the configuration's database; it and its seconds to /healthz."""
    service = s.new_service(ttl)
    service.env |= env
    seconds = await service.start()
    log(f"{service.name} (pid {service.pid}) answers on {service.url} after {seconds:.2f} s")
    return service, seconds


def why(exc: BaseException) -> str:
    """What a failed start said last at level error (its JSON log line), else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            if entry["level"] in ("error", "critical"):
                return str(entry["message"])[:300]
    return lines[0][:300] if lines else type(exc).__name__


async def metric(http: aiohttp.ClientSession, service: Service, name: str) -> float:
    """The replica's metric `name` from /metrics, summed over any labels; 0 if it has none."""
    async with http.get(f"{service.url}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        # `name value` or `name{labels} value`: prometheus-client writes no timestamps.
        if line.startswith(name) and line[len(name) : len(name) + 1] in " {":
            total += float(line.rsplit(None, 1)[-1])
    return total
