"""The Twilio Verify v2 surface: Twilio's own API, so its SDKs work with one line changed.

`client.verify.base_url = "https://ours"`, and `client.verify.v2.services(SID)...` reaches this
sub-application: HTTP Basic mapped to our API keys (`auth`), Twilio's error body and codes
(`errors`), Twilio's resources field for field (`render`), and the subset of Twilio's OpenAPI
document that it serves (`openapi`). Its contract is `twilio_verify_v2.json`, Twilio's own.
"""

from __future__ import annotations

from aiohttp import web

from service.api.twilio import views
from service.api.twilio.auth import authentication
from service.api.twilio.errors import errors
from service.config import Settings

#: Where the root app mounts this surface: Twilio's own version prefix.
PREFIX = "/v2"

SERVICE = "/Services/{ServiceSid}"


def create_twilio(settings: Settings) -> web.Application:
    """The surface, to mount at `PREFIX`; its handlers reach the app's objects by config_dict."""
    # `errors` outside `authentication`, so a refused key is answered in Twilio's body.
    auth = authentication(settings.auth.api_keys, settings.verify_v2.account_sid)
    app = web.Application(middlewares=[errors, auth])
    app[views.service_dates_key] = views.ServiceDates()
    app.router.add_get("/Services", views.list_services)
    app.router.add_post("/Services", views.create_service)
    app.router.add_get("/Services/{Sid}", views.fetch_service)
    app.router.add_post(f"{SERVICE}/Verifications", views.create_verification)
    app.router.add_get(f"{SERVICE}/Verifications/{{Sid}}", views.fetch_verification)
    app.router.add_post(f"{SERVICE}/Verifications/{{Sid}}", views.update_verification)
    app.router.add_post(f"{SERVICE}/VerificationCheck", views.check_verification)
    return app
