"""The SQLite store's webhook outbox, and an endpoint disabled staying so until its URL changes."""

from __future__ import annotations

from pathlib import Path

from service.store.base import WebhookBacklog
from service.store.sqlite.store import SqliteStore
from tests.support.clock import SetClock
from tests.support.database import database
from tests.support.webhook_store import ENDPOINTS, check_deliveries, finish


async def test_deliveries_per_endpoint(tmp_path: Path, clock: SetClock) -> None:
    store = await SqliteStore.open(str(tmp_path / "v.db"), clock=clock, webhooks=ENDPOINTS)
    try:
        await check_deliveries(store, clock)
    finally:
        await store.close()
    with database(tmp_path / "v.db") as db:
        assert db.execute("SELECT count(*) FROM webhook_deliveries").fetchone() == (0,)


async def test_a_disabled_endpoint_is_enabled_again_by_a_new_url(
    tmp_path: Path, clock: SetClock
) -> None:
    path = str(tmp_path / "v.db")
    store = await SqliteStore.open(path, clock=clock, webhooks=ENDPOINTS)
    await store.disable_webhook("a", "HTTP 410")
    await store.close()
    store = await SqliteStore.open(path, clock=clock, webhooks=ENDPOINTS)
    await finish(store, "VEone")
    assert await store.webhook_backlog("a") == WebhookBacklog(0, None, True)
    await store.close()
    store = await SqliteStore.open(path, clock=clock, webhooks={**ENDPOINTS, "a": "https://new/"})
    try:
        await finish(store, "VEtwo")
        assert await store.webhook_backlog("a") == WebhookBacklog(1, 1_000.0, False)
    finally:
        await store.close()
