"""The surface's OpenAPI document: valid, public, and in step with the surface's routes."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from service.api.durable import DOCUMENT
from service.api.durable.openapi import openapi_document
from service.config import Settings
from tests.support.api import MakeClient
from tests.support.durable import WEBHOOK

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PREFIXES = (WEBHOOK, "/api/orchestrators/", "/orchestrators/")


async def test_the_served_document_is_valid_and_needs_no_key(client: Any) -> None:
    r = await client.get(DOCUMENT)
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    validate(await r.json())


async def test_every_route_of_the_surface_is_documented_and_nothing_else(client: Any) -> None:
    document = await (await client.get(DOCUMENT)).json()
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
        if path.startswith(PREFIXES) and not (m == "HEAD" and ("GET", path) in routes)
    }
    assert served == documented


async def test_the_code_length_comes_from_the_settings(make_client: MakeClient) -> None:
    client = await make_client(verification={"code_length": 8})
    document = await (await client.get(DOCUMENT)).json()
    assert "8 digits" in document["components"]["schemas"]["EventBody"]["description"]


def test_every_operation_but_the_document_takes_a_key_and_documents_500() -> None:
    document = openapi_document(Settings())
    for path, item in document["paths"].items():
        for method, operation in ((m, o) for m, o in item.items() if m in METHODS):
            if path == DOCUMENT:
                assert operation["security"] == []
                continue
            assert {"code", "functionsKey", "bearer"} == {
                name for scheme in operation["security"] for name in scheme
            }, (method, path)
            assert {"401", "500"} <= set(operation["responses"]), (method, path)
