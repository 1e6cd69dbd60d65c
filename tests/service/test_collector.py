"""The collector freezes only with many pending, and thaws once if the frozen heap outgrows them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.collector import FREEZE_FROM, Collector
from tests.support.collector import freeze_survivors


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    # Each test starts with nothing frozen; afterwards what the suite keeps alive is frozen
    # again, as the suite's conftest froze it after collection.
    gc.unfreeze()
    yield
    gc.unfreeze()
    freeze_survivors()


def test_few_pending_freeze_nothing() -> None:
    Collector(lambda: FREEZE_FROM - 1).freeze()
    assert gc.get_freeze_count() == 0


def test_many_pending_freeze_what_lives_and_a_grown_heap_is_thawed_once() -> None:
    pending = [FREEZE_FROM]
    collector = Collector(lambda: pending[0])
    collector.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not collector.audit()  # as many pending as when it froze: nothing to do

    # Cycles made garbage after being frozen are what freezing cannot free.
    cycles: list[list[object]] = [[] for _ in range(3 * frozen)]
    for c in cycles:
        c.append(c)
    collector.freeze()
    del cycles
    pending[0] = FREEZE_FROM // 2  # and fewer wait now
    assert collector.audit()
    assert gc.get_freeze_count() < 2 * frozen  # collected, then what lives frozen again
