"""Webhook endpoints: where outcomes are POSTed, read from configuration only, checked at start.

`[webhooks]` holds the back-off every endpoint shares; each `[[webhooks.endpoints]]` names one
receiver: its `url`, its `secrets` (Standard Webhooks' `whsec_...`, from the environment:
`VERIFY_WEBHOOKS_<NAME>_SECRETS`), its per-attempt timeout and delivery horizon. The list itself
may come from the environment as JSON (`VERIFY_WEBHOOKS_ENDPOINTS`), so a process can be pointed
at a receiver without a file. An endpoint must be HTTPS unless its host is loopback, and may not
be a private address (loopback included) unless it says `allow_private = true`; the addresses a
name resolves to are checked again at every delivery (`refused_address`), against DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from notifier.settings import Secret, section
from service.errors import ConfigError

#: The variable holding the endpoints as a JSON list of tables, instead of the file's.
ENDPOINTS_VARIABLE = "VERIFY_WEBHOOKS_ENDPOINTS"
#: Names go into metrics labels, variable names and the database: kept plain.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
SECRET_PREFIX = "whsec_"
#: Standard Webhooks asks for secrets of 24 to 64 random bytes.
MIN_SECRET_BYTES = 24
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Endpoint:
    """One receiver. `secrets`: every one signs each delivery, so a receiver holding any of them
    accepts it, which is how a secret is rotated (add the new one, move receivers, drop the old).
    """

    name: str = ""
    url: str = ""
    secrets: tuple[Secret, ...] = ()
    #: Per attempt, connecting to the last byte of the answer's head.
    timeout_seconds: float = 10.0
    #: How long an outcome is tried for, from its decision; then it is dropped, logged, counted.
    horizon_seconds: float = 86400.0
    #: Loopback, RFC 1918, link-local and unique-local addresses are refused unless this is set.
    allow_private: bool = False

    def __post_init__(self) -> None:
        where = f"webhooks.endpoints.{self.name or '?'}"
        if not NAME.fullmatch(self.name):
            raise ConfigError(
                f"Config '{where}.name' must be lower-case letters, digits, '_' or '-',"
                f" starting with a letter, not {self.name!r}."
            )
        check_url(self.url, where=f"{where}.url", allow_private=self.allow_private)
        if not self.secrets:
            raise ConfigError(
                f"Config '{where}.secrets' is missing: set {secrets_variable(self.name)} to one"
                " or more whsec_ secrets (comma-separated); deliveries are always signed."
            )
        for secret in self.secrets:
            check_secret(secret, f"{where}.secrets")
        for key in ("timeout_seconds", "horizon_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"Config '{where}.{key}' must be positive.")

    @property
    def signers(self) -> tuple[Webhook, ...]:
        return tuple(Webhook(secret) for secret in self.secrets)


@dataclass(frozen=True)
class WebhookSettings:
    #: The first wait after a failed attempt; it doubles with each failure, up to the maximum,
    #: each one drawn between half and all of it (jitter: endpoints down together retry apart).
    retry_first_seconds: float = 5.0
    retry_max_seconds: float = 900.0
    #: Of an answer's body, at most this much is read (for the log line of a failure).
    max_response_bytes: int = 1024
    endpoints: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.retry_first_seconds <= self.retry_max_seconds:
            raise ConfigError(
                "Config 'webhooks.retry_first_seconds' must be positive, and at most"
                " 'webhooks.retry_max_seconds'."
            )
        if self.max_response_bytes < 0:
            raise ConfigError("Config 'webhooks.max_response_bytes' must be 0 or more.")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ConfigError("Config 'webhooks.endpoints' names an endpoint twice.")


@dataclass(frozen=True)
class _Shared:
    """The flat keys of `[webhooks]`, read by the loader every section uses."""

    retry_first_seconds: float = WebhookSettings.retry_first_seconds
    retry_max_seconds: float = WebhookSettings.retry_max_seconds
    max_response_bytes: int = WebhookSettings.max_response_bytes


def webhook_settings(table: Mapping[str, Any], env: Mapping[str, str]) -> WebhookSettings:
    """`[webhooks]` and its endpoints from the file, each overridden by the environment."""
    raw = env.get(ENDPOINTS_VARIABLE, "")
    if raw:
        try:
            listed = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{ENDPOINTS_VARIABLE} is not JSON: {exc}") from None
    else:
        listed = table.get("endpoints", [])
    if not isinstance(listed, list) or not all(isinstance(e, Mapping) for e in listed):
        raise ConfigError("Config 'webhooks.endpoints' must be a list of tables.")
    shared = section(_Shared, "webhooks", {k: v for k, v in table.items() if k != "endpoints"}, env)
    return WebhookSettings(
        retry_first_seconds=shared.retry_first_seconds,
        retry_max_seconds=shared.retry_max_seconds,
        max_response_bytes=shared.max_response_bytes,
        endpoints=tuple(_endpoint(e, env) for e in listed),
    )


def _endpoint(table: Mapping[str, Any], env: Mapping[str, str]) -> Endpoint:
    name = table.get("name", "")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(
            "Config 'webhooks.endpoints' has an endpoint without a valid name (lower-case"
            f" letters, digits, '_' or '-', starting with a letter): {name!r}."
        )
    # VERIFY_WEBHOOKS_<NAME>_<KEY> overrides each key of the endpoint, secrets above all.
    return section(Endpoint, f"webhooks_{name.replace('-', '_')}", table, env)


def secrets_variable(name: str) -> str:
    return f"VERIFY_WEBHOOKS_{name.replace('-', '_').upper()}_SECRETS"


def check_secret(secret: str, where: str) -> None:
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"Config '{where}' must be secrets starting with '{SECRET_PREFIX}'.")
    try:
        key = Webhook(secret)._whsecret
    except Exception:
        raise ConfigError(f"Config '{where}' has a secret that is not base64.") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"Config '{where}' has a secret of {len(key)} bytes; at least {MIN_SECRET_BYTES}."
        )


def check_url(url: str, *, where: str, allow_private: bool) -> None:
    """Refuse a URL that is not HTTPS (HTTP only to loopback) or names a private address."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise ConfigError(f"Config '{where}' is not a URL.") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"Config '{where}' must be an https:// URL, not {parts.scheme!r}.")
    if parts.username or parts.password:
        raise ConfigError(f"Config '{where}' must not carry credentials: sign with secrets.")
    loopback = is_loopback(host)
    if parts.scheme == "http" and not loopback:
        raise ConfigError(f"Config '{where}' must be https://; plain http only to loopback.")
    if (loopback or _private_literal(host)) and not allow_private:
        raise ConfigError(
            f"Config '{where}' names a private or loopback address; set allow_private = true"
            " on the endpoint if that is meant (development, a private network)."
        )


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_literal(host: str) -> bool:
    try:
        return not is_public(ipaddress.ip_address(host))
    except ValueError:
        return False  # a name: its addresses are checked at each delivery


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet (not private, loopback, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast
