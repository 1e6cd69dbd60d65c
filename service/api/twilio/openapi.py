"""The surface's OpenAPI document: Twilio's own, cut to the operations served here.

`twilio_verify_v2.subset.json` beside this module is `subset()` of Twilio's spec
(`twilio_verify_v2.json`, twilio/twilio-oai, MIT: `TWILIO_SPEC_LICENSE`): the paths and methods
not implemented dropped, and with them the schemas nothing refers to any more. A test makes it
again from the full spec and compares. Served at /v2/openapi.json with this deployment's server.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from service.api.keys import settings_key

SUBSET = Path(__file__).with_name("twilio_verify_v2.subset.json")

#: The operations served, by Twilio's path template and method.
SERVED: dict[str, tuple[str, ...]] = {
    "/v2/Services": ("get", "post"),
    "/v2/Services/{Sid}": ("get",),
    "/v2/Services/{ServiceSid}/Verifications": ("post",),
    "/v2/Services/{ServiceSid}/Verifications/{Sid}": ("get", "post"),
    "/v2/Services/{ServiceSid}/VerificationCheck": ("post",),
}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def subset(full: dict[str, Any]) -> dict[str, Any]:
    """Twilio's spec `full`, with only the operations served and the schemas they need."""
    paths: dict[str, Any] = {}
    for path, methods in SERVED.items():
        item = full["paths"][path]
        paths[path] = {k: v for k, v in item.items() if k not in METHODS or k in methods}
    schemas = full["components"]["schemas"]
    kept = _referenced(paths, schemas)
    return {
        **{k: v for k, v in full.items() if k not in ("paths", "components")},
        "paths": paths,
        "components": {
            "securitySchemes": full["components"]["securitySchemes"],
            "schemas": {name: schemas[name] for name in sorted(kept)},
        },
    }


@functools.cache
def served() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SUBSET.read_text())
    return document


def document(base_url: str) -> dict[str, Any]:
    """The subset, its servers this deployment's."""
    result = copy.deepcopy(served())
    result["servers"] = [{"url": base_url}]
    for item in result["paths"].values():
        item["servers"] = [{"url": base_url}]
    return result


async def openapi(request: web.Request) -> web.Response:
    settings = request.config_dict[settings_key].verify_v2
    base = settings.public_base_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return web.json_response(document(base))


def _referenced(value: object, schemas: dict[str, Any]) -> set[str]:
    """The component schemas `value` refers to, and those they refer to, and so on."""
    found: set[str] = set()
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    todo.append(schemas[name])
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return found
