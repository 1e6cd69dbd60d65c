"""The v1 API surface: verifications, as a sub-application behind bearer API keys.

Everything it serves is under `PREFIX`, and every request it is given passes its `errors` and
`authentication` middlewares: it owns its status table and error body (`errors`), its views'
JSON (`render`), its auth (`auth`) and its OpenAPI document (`openapi`).
"""

from __future__ import annotations

from aiohttp import web

from service.api.v1 import views
from service.api.v1.auth import authentication
from service.api.v1.errors import errors
from service.config import Settings

#: Where the root app mounts this surface.
PREFIX = "/verifications"


def create_v1(settings: Settings) -> web.Application:
    """The surface, to mount at `PREFIX`; its handlers reach the app's objects by config_dict."""
    # `errors` outside `authentication`, so a refused key is answered in this surface's format.
    app = web.Application(middlewares=[errors, authentication(settings.auth.api_keys)])
    app.router.add_post("", views.start)
    app.router.add_get("/{id}", views.get)
    app.router.add_delete("/{id}", views.cancel)
    app.router.add_post("/{id}/code", views.submit_code)
    return app
