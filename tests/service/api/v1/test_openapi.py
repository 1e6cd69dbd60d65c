"""The OpenAPI document: valid, built from the settings, and in step with the app's routes."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from service.api import durable
from service.api.v1.openapi import openapi_document
from service.config import Settings
from tests.support.api import MakeClient

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DURABLE = (durable.WEBHOOK, *(f"{prefix}/" for prefix in durable.STARTERS))


async def test_the_served_document_is_valid(client: Any) -> None:
    r = await client.get("/openapi.json")
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    validate(await r.json())


async def test_every_route_is_documented_and_nothing_else(client: Any) -> None:
    document = await (await client.get("/openapi.json")).json()
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    routes = [(route.method, route.resource.canonical) for route in client.app.router.routes()]
    # aiohttp adds a HEAD beside every GET; the document leaves those implied. The Durable
    # Functions and Twilio surfaces' routes are in their own documents.
    served = {
        (m, path)
        for m, path in routes
        if not (m == "HEAD" and ("GET", path) in routes) and not path.startswith((*DURABLE, "/v2/"))
    }
    assert served == documented


async def test_limits_come_from_the_settings(make_client: MakeClient) -> None:
    client = await make_client(
        verification={"code_length": 8, "max_reference_length": 50},
        server={"max_body_bytes": 4096},
    )
    document = await (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    code = schemas["CodeRequest"]["properties"]["code"]
    assert (code["minLength"], code["maxLength"], code["pattern"]) == (8, 8, "^[0-9]{8}$")
    assert schemas["StartRequest"]["properties"]["reference"]["maxLength"] == 50
    assert "4096 bytes" in document["components"]["responses"]["PayloadTooLarge"]["description"]


def test_every_verification_operation_needs_a_key_and_documents_its_errors() -> None:
    document = openapi_document(Settings())
    validate(document)
    for path, item in document["paths"].items():
        for method, operation in ((m, o) for m, o in item.items() if m in METHODS):
            assert "500" in operation["responses"], (method, path)
            if path.startswith("/verifications"):
                assert operation["security"] == [{"bearer": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
            else:
                assert operation["security"] == [], (method, path)
