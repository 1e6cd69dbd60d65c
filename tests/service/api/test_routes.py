"""Every route of every surface: public because `operations.PUBLIC` lists it, or 401 without a key.

The routes are read from the app itself, the root's and each sub-application's, so a route added
anywhere is walked here without this test being told of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from service.api import operations
from service.api.durable import openapi as durable_openapi
from service.api.v1 import openapi as v1_openapi
from service.config import Settings

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

#: The public routes as aiohttp serves them: a HEAD beside each GET.
ROUTES = (*operations.PUBLIC, *operations.TWILIO_PUBLIC)
PUBLIC = {(d.method, d.path) for d in ROUTES} | {
    ("HEAD", d.path) for d in ROUTES if d.method == "GET"
}
#: The scheme each surface asks for, by its prefix.
SCHEMES = {
    "/verifications": "Bearer",
    "/v2/": "Basic",
    "/runtime/": "Bearer",
    "/api/orchestrators": "Bearer",
    "/orchestrators": "Bearer",
}


def walk(app: web.Application) -> Iterator[tuple[web.Application, AbstractRoute]]:
    """Each route with the app that serves it, down through every sub-application."""
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            yield from walk(resource.get_info()["app"])
        else:
            for route in resource:
                yield app, route


def url(route: AbstractRoute) -> str:
    return re.sub(r"\{[A-Za-z]+\}", "VEnope", canonical(route))


def canonical(route: AbstractRoute) -> str:
    assert route.resource is not None
    return route.resource.canonical


async def test_every_route_is_public_by_choice_or_needs_a_key(client: Any) -> None:
    root = client.app
    walked = list(walk(root))
    served = {(route.method, canonical(route)) for _, route in walked}
    assert served >= PUBLIC
    assert served - PUBLIC, "no surface's routes were walked"
    for app, route in walked:
        key = (route.method, canonical(route))
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = await client.request(route.method, url(route), headers=headers)
            if key in PUBLIC:
                assert app is root, f"{key} is public but served by a surface"
                assert r.status == 200, (key, await r.text())
            else:
                assert r.status == 401, (key, headers, await r.text())
                scheme = next(v for k, v in SCHEMES.items() if key[1].startswith(k))
                assert r.headers["WWW-Authenticate"].startswith(scheme), key


async def test_a_surface_asks_for_a_key_before_it_says_a_path_is_unknown(client: Any) -> None:
    for method, path in [("GET", "/verifications/VEnope/nowhere"), ("PUT", "/verifications")]:
        r = await client.request(method, path)
        assert r.status == 401, (method, path, await r.text())
        assert (await r.json())["error"]["code"] == "unauthorized"


def test_the_documents_call_public_exactly_the_public_routes() -> None:
    documents = [m.openapi_document(Settings()) for m in (v1_openapi, durable_openapi)]
    public = {
        (method.upper(), path)
        for document in documents
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS and operation["security"] == []
    }
    ours = {(d.method, d.path) for d in operations.PUBLIC}
    assert public == ours
