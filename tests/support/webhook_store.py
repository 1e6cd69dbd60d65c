"""The webhook outbox's behaviour, one scenario every store's tests run (SQLite, PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace

from service.models import Status
from service.store import Decided, Store
from service.store.base import WebhookBacklog
from tests.support.clock import SetClock
from tests.support.verifications import verification

#: What the store is opened with: the endpoints configured, name -> URL.
ENDPOINTS = {"a": "https://a.example.com/", "b": "https://b.example.com/"}


async def finish(store: Store, verification_id: str) -> None:
    v = verification(verification_id)
    await store.insert(v)
    final = replace(v, status=Status.CANCELED, completed_at=950.0)
    assert await store.finish([Decided(final, f'{{"id":"{verification_id}"}}')]) == {v.id}


async def check_deliveries(store: Store, clock: SetClock) -> None:
    """Every outcome once per enabled endpoint; retries wait; 410 drops and disables; purge."""
    await finish(store, "VEone")
    [a] = await store.webhooks_due("a", 10, clock())
    [b] = await store.webhooks_due("b", 10, clock())
    assert (a.verification_id, a.body, a.created_at, a.attempts) == (
        "VEone",
        '{"id":"VEone"}',
        1_000.0,
        0,
    )
    await store.webhook_failed(a.seq, clock() + 10, "HTTP 500")
    assert await store.webhooks_due("a", 10, clock()) == []
    assert await store.webhook_next_due("a") == clock() + 10
    [again] = await store.webhooks_due("a", 10, clock() + 10)
    assert again.attempts == 1
    await store.webhook_delivered(b.seq)
    assert await store.webhooks_due("b", 10, clock() + 100) == []
    assert await store.webhook_next_due("b") is None
    assert await store.webhook_backlog("a") == WebhookBacklog(1, 1_000.0, False)
    assert await store.webhook_backlog("b") == WebhookBacklog(0, None, False)

    assert await store.disable_webhook("a", "HTTP 410") == 1
    assert await store.webhook_backlog("a") == WebhookBacklog(0, None, True)
    await finish(store, "VEtwo")
    assert await store.webhooks_due("a", 10, clock()) == []
    [two] = await store.webhooks_due("b", 10, clock())
    assert two.verification_id == "VEtwo"
    await store.webhook_dropped(two.seq, "past its horizon")
    assert await store.webhook_backlog("b") == WebhookBacklog(0, None, False)

    # Retention deletes finished deliveries once they are older than delivered outcomes are kept.
    clock.now = 5_000.0
    purged = await store.purge(finished_before=0.0, redact_before=0.0, sent_before=4_000.0)
    assert purged.touched >= 3
    # One undelivered when finished verifications go (its endpoint no longer configured, say):
    # given up, then purged as the others.
    await finish(store, "VEthree")
    await store.purge(finished_before=6_000.0, redact_before=0.0, sent_before=4_000.0)
    assert await store.webhook_backlog("b") == WebhookBacklog(0, None, False)
    clock.now = 9_000.0
    await store.purge(finished_before=0.0, redact_before=0.0, sent_before=8_000.0)
