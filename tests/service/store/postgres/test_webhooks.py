"""The PostgreSQL store's webhook outbox: SQLite's behaviour, each delivery held by one replica."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

from tests.service.store.postgres.conftest import Opener
from tests.support.clock import SetClock
from tests.support.webhook_store import ENDPOINTS, check_deliveries, finish


async def test_deliveries_per_endpoint(opened: Opener, clock: SetClock) -> None:
    await check_deliveries(await opened(webhooks=ENDPOINTS), clock)


async def test_only_the_holder_delivers_and_a_lapsed_replica_s_deliveries_are_adopted(
    opened: Opener, clock: SetClock, db: asyncpg.Connection
) -> None:
    first = await opened(webhooks=ENDPOINTS, lease_seconds=0.5)
    second = await opened(webhooks=ENDPOINTS, lease_seconds=0.5)
    await finish(first, "VEone")
    assert len(await first.webhooks_due("a", 10, clock())) == 1
    assert await second.webhooks_due("a", 10, clock()) == [], "held by the first replica"
    await first.lease.leave()
    woken = []
    second.on_outcome = lambda: woken.append(True)
    await second.lease.adopt(100)
    assert [d.verification_id for d in await second.webhooks_due("a", 10, clock())] == ["VEone"]
    assert woken, "adopted deliveries wake the channels"
    holders = await db.fetch("SELECT DISTINCT holder FROM webhook_deliveries")
    assert [r[0] for r in holders] == [second.lease.name]
