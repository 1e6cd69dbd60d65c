"""The Durable Functions surface: the phone-verification lab's HTTP commands, unchanged.

The lab (Durable Functions' E4_SmsPhoneVerification sample) starts an orchestration through its
own HTTP starter, `POST /api/orchestrators/{functionName}` (`/orchestrators/...` without the
`api` route prefix), then follows the URLs the answer gives, all under the platform's built-in
webhook, `WEBHOOK` (`/runtime/webhooks/durabletask/instances/{instanceId}...`): raise
`SmsChallengeResponse` with the code, poll the status, terminate, purge. One verification is one
orchestration instance; its id is the instance id.

aiohttp mounts a sub-application at one prefix only, so the surface is three of them built alike
(`_surface`: the same `errors` and `authentication` middlewares, the same start handler): the
webhook with every route, and a starter at each of `STARTERS`. It owns its status table and error
body (`errors`), its JSON (`render`), its auth (`auth`: Functions' `code` or `x-functions-key`
is this service's API key) and its OpenAPI document (`openapi`, at `DOCUMENT` on the root app).
"""

from __future__ import annotations

from aiohttp import web

from service.api.durable import views
from service.api.durable.auth import authentication
from service.api.durable.errors import errors
from service.api.durable.render import WEBHOOK
from service.config import Settings

#: The lab's HTTP starter, with Functions' default route prefix `api` and without it.
STARTERS = ("/api/orchestrators", "/orchestrators")
#: Where the root app serves this surface's OpenAPI document, beside the webhook.
DOCUMENT = f"{WEBHOOK}/openapi.json"

__all__ = ["DOCUMENT", "STARTERS", "WEBHOOK", "create_starter", "create_webhook"]


def create_webhook(settings: Settings) -> web.Application:
    """The built-in HTTP API, to mount at `WEBHOOK`."""
    app = _surface(settings)
    app.router.add_post("/orchestrators/{functionName}", views.start)
    app.router.add_post("/orchestrators/{functionName}/{instanceId}", views.start)
    app.router.add_get("/instances", views.list_instances)
    app.router.add_delete("/instances", views.purge_instances)
    instance = "/instances/{instanceId}"
    app.router.add_get(instance, views.status)
    app.router.add_delete(instance, views.purge)
    app.router.add_post(f"{instance}/raiseEvent/{{eventName}}", views.raise_event)
    app.router.add_post(f"{instance}/terminate", views.terminate)
    app.router.add_post(f"{instance}/restart", views.restart)
    for operation in ("suspend", "resume", "rewind"):
        app.router.add_post(f"{instance}/{operation}", views.unsupported(operation))
    return app


def create_starter(settings: Settings) -> web.Application:
    """The lab's HTTP starter function, to mount at each of `STARTERS`."""
    app = _surface(settings)
    app.router.add_post("/{functionName}", views.start)
    app.router.add_post("/{functionName}/{instanceId}", views.start)
    return app


def _surface(settings: Settings) -> web.Application:
    # `errors` outside `authentication`, so a refused key is answered in this surface's format.
    return web.Application(middlewares=[errors, authentication(settings.auth.api_keys)])
