"""The limits' windows in PostgreSQL, so that every replica counts in the same ones.

A window of N events per S seconds is kept as counts per tenth of S (`limit_counts`), summed over
the last ten: a check costs ten rows however large N is (the SMS budget's 6,000 a minute), and a
window lets an event back in up to a tenth of S early, when its slot leaves. The counting is one
call of `limits_count` (schema, migration 3), which takes the windows' locks in a fixed order:
two replicas starting for one number at once take turns, so neither sees room the other took.
Keys are hashed into buckets: the table holds no phone number or API key in the clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from service.store.base import Window

UNCOUNT = """
    UPDATE limit_counts AS c SET n = c.n - 1
    FROM unnest($1::text[], $2::double precision[]) AS w (bucket, seconds)
    WHERE c.bucket = w.bucket AND c.slot = floor($3 / (w.seconds / 10))::bigint AND c.n > 0
"""
#: Rows whose slot has left its window, swept by retention a chunk at a time.
SWEEP = """
    DELETE FROM limit_counts WHERE (bucket, slot) IN (
        SELECT bucket, slot FROM limit_counts WHERE until < $1 LIMIT $2)
"""


class PostgresTally:
    """The `Tally` on PostgreSQL; `write` runs a unit of work as the store's writes do."""

    def __init__(self, write: Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Any]):
        self._write = write

    async def count(self, windows: Sequence[Window], now: float) -> tuple[int, float] | None:
        buckets = [_bucket(w) for w in windows]
        limits = [w.limit for w in windows]
        seconds = [w.seconds for w in windows]
        row = await self._write(
            lambda db: db.fetchrow(
                "SELECT * FROM limits_count($1::text[], $2::integer[], $3::double precision[], $4)",
                buckets,
                limits,
                seconds,
                now,
            )
        )
        refused, wait = int(row[0]), float(row[1])
        return None if refused == 0 else (refused - 1, wait)

    async def uncount(self, windows: Sequence[Window], at: float) -> None:
        buckets = [_bucket(w) for w in windows]
        seconds = [w.seconds for w in windows]
        await self._write(lambda db: db.execute(UNCOUNT, buckets, seconds, at))


def _bucket(w: Window) -> str:
    # A digest, not the key: a number or an API key is not kept in the clear for its window.
    digest = hashlib.blake2b(w.key.encode(), digest_size=12).hexdigest()
    return f"{w.name}:{w.limit}:{w.seconds:g}:{digest}"
