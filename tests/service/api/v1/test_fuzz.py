"""Schemathesis against the served document: no 5xx, and every answer is one the document gives.

The app and the fake Twilio run on the test's event loop, as in every other test. Schemathesis
calls with `requests`, which blocks, so it runs in a worker thread and reaches them over a socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.v1.openapi import openapi_document
from service.config import Settings
from tests.support.api import AUTH, MakeClient, start

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Examples per operation and mode: data the document allows, then data it forbids.
MAX_EXAMPLES = 15
#: Numbers phonenumbers takes as valid. The schema's pattern alone seldom draws one, and only a
#: valid number takes a start past 422 to 202 (and, drawn again, to the per-phone 429).
PHONES = st.integers(0, 9999).map(lambda n: f"+1415555{n:04d}")

OPERATIONS = [
    f"{method.upper()} {path}"
    for path, item in openapi_document(Settings())["paths"].items()
    for method in item
    if method != "parameters"
]


@pytest.mark.parametrize("label", OPERATIONS)
async def test_operation_answers_as_documented(make_client: MakeClient, label: str) -> None:
    client = await make_client()
    base_url = str(client.make_url("")).rstrip("/")
    # Random ids only ever find 404; this one leads to 200 and, once final, to 409.
    verification_id = (await start(client, "+14155550142"))["id"]
    await asyncio.to_thread(fuzz, base_url, label, verification_id)


def fuzz(base_url: str, label: str, verification_id: str) -> None:
    """Raise the first failing example, shrunk, with a curl command to replay it."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    with requests.Session() as session:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(mode)
            if "{id}" in operation.path:
                real = operation.as_strategy(mode, path_parameters={"id": verification_id})
                strategy = st.one_of(strategy, real)
            if mode is GenerationMode.POSITIVE:
                strategy = st.one_of(strategy, st.builds(_with_valid_phone, strategy, PHONES))
            try:
                _run(strategy, base_url, session)
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to make invalid: no parameters, no body, no key
            except BaseException as exc:
                exc.add_note(f"{label}, with {mode.value} data")
                raise


def _with_valid_phone(case: Any, phone: str) -> Any:
    if isinstance(case.body, dict) and isinstance(case.body.get("phone"), str):
        case.body["phone"] = phone
    return case


def _run(strategy: st.SearchStrategy[Any], base_url: str, session: requests.Session) -> None:
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        # Derandomized, so a run in CI fails only where a run here does; no example database.
        derandomize=True,
        database=None,
        phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, session=session, headers=AUTH, checks=CHECKS)

    check()
