"""Reading GET /metrics in tests: every sample, by name and labels."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families


async def scrape(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics, by name and labels."""
    r = await client.get("/metrics")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await r.text())
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
