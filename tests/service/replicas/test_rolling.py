"""A rolling restart under load: each replica in turn is stopped (SIGTERM) and started again under
its name while clients keep starting and answering verifications on all of them, retrying a 503
or a refused connection on the next replica as a load balancer would. Nothing may be lost.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.api import wrong
from tests.support.replicas import MakeReplicas, Replicas, phone

TTL = 3.0
WORKERS = 6


@dataclass
class Tracked:
    id: str
    phone: str
    plan: str  # "right", "wrong", "cancel" or "silent"
    approved_seen: bool = False


@dataclass
class Balancer:
    """Sends each request to a replica, and on to the next while it is refused or unreachable."""

    cluster: Replicas
    pick: random.Random
    #: Every answer's status and whether it had Retry-After, and the connections that failed.
    answers: list[tuple[int, bool]] = field(default_factory=list)
    unreachable: int = 0

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        replicas = self.cluster.replicas
        first = self.pick.randrange(len(replicas))
        for attempt in range(60):
            replica = replicas[(first + attempt) % len(replicas)]
            try:
                status, headers, body = await self.cluster.call(replica, method, path, **kwargs)
            except (aiohttp.ClientConnectionError, TimeoutError):
                self.unreachable += 1
                await asyncio.sleep(0.05)
                continue
            self.answers.append((status, "Retry-After" in headers))
            if status != 503:
                return status, headers, body
            await asyncio.sleep(0.05)
        raise AssertionError(f"{method} {path}: no replica took it")


class Load:
    """Workers starting verifications and answering them rightly, wrongly, or not at all."""

    def __init__(self, cluster: Replicas) -> None:
        self.cluster = cluster
        self.balancer = Balancer(cluster, random.Random(6))
        self.pick = random.Random(66)
        self.tracked: list[Tracked] = []
        self.stopping = False

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(w) for w in range(WORKERS)))

    async def _worker(self, worker: int) -> None:
        n = 0
        while not self.stopping:
            n += 1
            await self._one(phone(worker * 1000 + n), key=f"w{worker}-{n}")

    async def _one(self, to: str, key: str) -> None:
        status, _, view = await self.balancer.call(
            "POST", "/verifications", json={"phone": to}, headers={"Idempotency-Key": key}
        )
        assert status == 202, view
        tracked = Tracked(view["id"], to, self.pick.choice(["right", "wrong", "cancel", "silent"]))
        self.tracked.append(tracked)
        message = await self.cluster.twilio.wait_for_message(to, timeout=TTL)
        await asyncio.sleep(self.pick.uniform(0, TTL / 3))
        if tracked.plan == "silent":
            return
        if tracked.plan == "cancel":
            status, _, body = await self.balancer.call("DELETE", f"/verifications/{tracked.id}")
            assert status in (200, 409), body
            return
        code = message.code or ""
        guess = code if tracked.plan == "right" else wrong(code)
        status, _, body = await self.balancer.call(
            "POST", f"/verifications/{tracked.id}/code", json={"code": guess}
        )
        assert status in (200, 409), body
        tracked.approved_seen = status == 200 and body["status"] == "approved"


async def test_a_rolling_restart_under_load_loses_nothing(make_replicas: MakeReplicas) -> None:
    cluster = await make_replicas(3, ttl_seconds=TTL)
    load = Load(cluster)
    driving = asyncio.create_task(load.run())
    try:
        for replica in cluster.replicas:
            await asyncio.sleep(1.0)
            assert await replica.restart() == 0, replica.logs()
        await asyncio.sleep(1.0)
    finally:
        load.stopping = True
        await driving

    tracked = load.tracked
    assert len(tracked) >= 30, "the load should have started a fair number"
    ids = [t.id for t in tracked]
    finals = await cluster.wait_final(cluster.replicas[0], ids, seconds=TTL + 10)
    outcomes = await cluster.outcomes(ids)
    # Every answer was a decision, or a 503 with Retry-After, to be asked again elsewhere.
    failures = [a for a in load.balancer.answers if a[0] >= 500]
    assert all(failure == (503, True) for failure in failures), failures
    for t in tracked:
        status = finals[t.id]["status"]
        assert [o.status for o in outcomes.get(t.id, [])] == [status], (t, finals[t.id])
        if t.approved_seen:
            assert status == "approved", "an acknowledged approval was lost"
        if status == "approved":
            assert t.plan == "right", t
    assert len(cluster.received) == len(tracked), "an outcome was published twice"
    # Nothing else was started, nothing is left pending or unsent.
    db = cluster.connection()
    assert sorted(await db.fetchval("SELECT array_agg(id) FROM verifications")) == sorted(ids)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    print(
        f"{len(tracked)} verifications, {len(load.balancer.answers)} answers,"
        f" {len(failures)} 503s and {load.balancer.unreachable} refused connections retried"
    )
