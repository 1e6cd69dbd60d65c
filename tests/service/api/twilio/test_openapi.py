"""The Twilio surface's document: Twilio's spec cut to what is served, valid, and in step."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import ValidationError  # type: ignore[import-untyped]
from openapi_spec_validator import validate
from twilio.http.response import Response  # type: ignore[import-untyped]

from service.api.twilio.openapi import SUBSET, subset
from tests.support.verify_v2 import SPEC_PATH, Answer, SpecCheck

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_the_shipped_subset_is_cut_from_twilios_spec() -> None:
    assert json.loads(SUBSET.read_text()) == subset(json.loads(SPEC_PATH.read_text()))


async def test_the_served_document_is_valid_and_names_this_server(client: Any) -> None:
    r = await client.get("/v2/openapi.json")
    assert r.status == 200, await r.text()
    document = await r.json()
    validate(document)
    base = str(client.make_url("")).rstrip("/")
    assert document["servers"] == [{"url": base}]


async def test_every_route_of_the_surface_is_documented_and_nothing_else(client: Any) -> None:
    document = await (await client.get("/v2/openapi.json")).json()
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    routes = [(route.method, route.resource.canonical) for route in client.app.router.routes()]
    served = {
        (m, path)
        for m, path in routes
        if path.startswith("/v2/Services") and not (m == "HEAD" and ("GET", path) in routes)
    }
    assert served == documented


def test_the_spec_check_refuses_what_the_sdk_could_not_read() -> None:
    """The validator the SDK tests rely on fails a date the SDK cannot parse, a field missing, a
    SID of the wrong form."""
    check = SpecCheck()
    good = {
        "sid": "VE" + "0" * 32,
        "service_sid": "VA" + "0" * 32,
        "account_sid": "AC" + "0" * 32,
        "to": "+14155550100",
        "channel": "sms",
        "status": "approved",
        "valid": True,
        "amount": None,
        "payee": None,
        "date_created": "2026-01-02T03:04:05Z",
        "date_updated": "2026-01-02T03:04:05Z",
        "sna_attempts_error_codes": [],
    }
    url = "http://x/v2/Services/VA" + "0" * 32 + "/VerificationCheck"

    def answer(body: dict[str, Any]) -> Answer:
        return Answer("POST", url, Response(200, json.dumps(body)))

    check.validate(answer(good))
    for bad in (
        {**good, "date_created": "2026-01-02T03:04:05.678Z"},
        {k: v for k, v in good.items() if k != "payee"},
        {**good, "sid": "XX1"},
    ):
        with pytest.raises((AssertionError, ValidationError)):
            check.validate(answer(bad))
