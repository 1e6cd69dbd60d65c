"""Fixtures of the store tests, both backends."""

from __future__ import annotations

import pytest

from tests.support.clock import SetClock


@pytest.fixture
def clock() -> SetClock:
    return SetClock(1_000.0)
