"""The DBOS peer shows a verification as ours does, and the comparison reads its runs."""

from __future__ import annotations

import pytest

# The peer is the bench extra's (`make install`); the other Pythons' venvs have only dev.
pytest.importorskip("dbos", reason="dbos comes with the bench extra")

from bench import comparison
from bench.peers.dbos.workflow import Started, view
from service.api.v1 import render
from service.models import Status, Verification


def test_the_peer_shows_the_fields_ours_shows() -> None:
    started = Started("VE1", "+14155550100", "ref", "123456", 3, 1000.0, 1090.0)
    ours = Verification(
        id="VE1",
        phone="+14155550100",
        reference="ref",
        status=Status.APPROVED,
        salt=b"",
        attempts_left=2,
        attempts=1,
        created_at=1000.0,
        expires_at=1090.0,
        completed_at=1010.5,
    )
    assert view(started, Status.APPROVED, 1, 1010.5) == render.view(ours)


def test_medians_and_ratios_of_the_rounds() -> None:
    reports = [
        {"completed_per_second": rate, "submit_ms": {"p50": p50}}
        for rate, p50 in ((100.0, 5.0), (300.0, 1.0), (200.0, 3.0))
    ]
    medians = comparison._medians(reports)
    assert medians["completed/s"] == 200.0
    assert medians["code p50 ms"] == 3.0
    assert medians["start p50 ms"] is None
    assert comparison._ratio(50.0, 200.0) == "0.25x"
    assert comparison._ratio(None, 200.0) == "-"
