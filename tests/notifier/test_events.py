"""The outcome event both ways: what `outcome_body` writes, `Outcome.from_message` reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notifier.events import (
    EVENT,
    BadSignature,
    MalformedMessage,
    Outcome,
    outcome_body,
    sign,
    signature_valid,
)

FIELDS: dict[str, Any] = {
    "id": "VE1",
    "status": "approved",
    "to": "+14155550100",
    "reference": "order-7",
    "attempts": 2,
    "created_at": "2026-01-01T00:00:00Z",
    "completed_at": "2026-01-01T00:00:30Z",
    "reason": None,
}


def message(body: str, **attributes: str) -> dict[str, object]:
    return {
        "MessageId": "m-1",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "3"},
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
        },
    }


def test_what_is_encoded_is_decoded() -> None:
    body = outcome_body(**FIELDS)

    outcome = Outcome.from_message(message(body))

    assert {name: getattr(outcome, name) for name in FIELDS} == FIELDS
    assert outcome.raw == {"event": EVENT, **FIELDS}
    assert (outcome.message_id, outcome.receive_count) == ("m-1", 3)


def test_the_body_is_compact_json_in_a_fixed_order() -> None:
    # Consumers check signatures over these very bytes: they must not change between versions.
    body = outcome_body(**FIELDS)
    assert body == json.dumps({"event": EVENT, **FIELDS}, separators=(",", ":"))


def test_with_a_key_only_the_signed_body_is_read() -> None:
    body = outcome_body(**FIELDS)

    assert Outcome.from_message(message(body, signature=sign("k", body)), "k").id == "VE1"
    assert signature_valid("k", body, sign("k", body))
    assert not signature_valid("k", body, sign("other", body))
    with pytest.raises(BadSignature, match="is not signed"):
        Outcome.from_message(message(body), "k")
    with pytest.raises(BadSignature, match="wrong signature"):
        Outcome.from_message(message(body, signature="v1=00"), "k")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not json", "is not JSON"),
        ('{"id": 1, "status": "approved"}', "has no outcome id and status"),
        ('{"id": "VE1", "status": "approved", "event": "other"}', "is not a verification"),
    ],
)
def test_what_is_not_an_outcome_is_malformed(body: str, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        Outcome.from_message(message(body))
