"""Webhook endpoints come from configuration only, and unsafe ones are refused at start."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.config import settings_from
from service.errors import ConfigError
from service.push.webhooks import AddressRefused, GuardedResolver
from tests.support.webhooks import SECRET


def webhooks(**endpoint: Any) -> Any:
    table = {"name": "backend", "url": "https://hooks.example.com/v", "secrets": [SECRET]}
    return settings_from({"webhooks": {"endpoints": [{**table, **endpoint}]}}, env={}).webhooks


def test_an_https_endpoint_with_a_secret_is_taken() -> None:
    [backend] = webhooks().endpoints
    assert backend.url == "https://hooks.example.com/v"
    assert backend.horizon_seconds == 86400.0 and backend.timeout_seconds == 10.0
    assert "whsec" not in repr(backend), "secrets never show"


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ({"url": "http://hooks.example.com/v"}, "must be https://"),
        ({"url": "ftp://hooks.example.com/v"}, "https://"),
        ({"url": "http://127.0.0.1:9000/"}, "allow_private"),
        ({"url": "https://10.1.2.3/"}, "allow_private"),
        ({"url": "https://[fd00::1]/"}, "allow_private"),
        ({"url": "https://169.254.169.254/latest"}, "allow_private"),
        ({"url": "https://user:pw@hooks.example.com/"}, "credentials"),
        ({"secrets": []}, "VERIFY_WEBHOOKS_BACKEND_SECRETS"),
        ({"secrets": ["not-a-whsec"]}, "whsec_"),
        ({"secrets": ["whsec_c2hvcnQ="]}, "at least 24"),
        ({"name": "Back End"}, "valid name"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_an_unsafe_or_incomplete_endpoint_is_refused_naming_the_key(
    endpoint: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        webhooks(**endpoint)


def test_loopback_over_http_is_allowed_when_private_addresses_are() -> None:
    [backend] = webhooks(url="http://127.0.0.1:9000/hooks", allow_private=True).endpoints
    assert backend.allow_private


def test_endpoints_and_secrets_come_from_the_environment() -> None:
    listed = [{"name": "backend", "url": "https://hooks.example.com/v"}]
    env = {
        "VERIFY_WEBHOOKS_ENDPOINTS": json.dumps(listed),
        "VERIFY_WEBHOOKS_BACKEND_SECRETS": f"{SECRET},{SECRET}",
        "VERIFY_WEBHOOKS_RETRY_FIRST_SECONDS": "0.5",
    }
    settings = settings_from({}, env=env).webhooks
    assert settings.retry_first_seconds == 0.5
    assert settings.endpoints[0].secrets == (SECRET, SECRET)


def test_an_endpoint_named_twice_is_refused() -> None:
    table = {"name": "a", "url": "https://hooks.example.com/", "secrets": [SECRET]}
    with pytest.raises(ConfigError, match="twice"):
        settings_from({"webhooks": {"endpoints": [table, table]}}, env={})


async def test_a_name_resolving_to_a_private_address_is_refused_at_connection() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(AddressRefused, match="private"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()
