"""Settings, parsed once from `config.toml` and the environment into frozen dataclasses.

Every setting has a default, so the service runs with no file at all. A setting `key` of section
`[section]` is overridden by the variable `VERIFY_SECTION_KEY`; a few also honour the names their
ecosystems use (`TWILIO_AUTH_TOKEN`, `AWS_ENDPOINT_URL`, ...). Lists come from the environment
comma-separated. Each section checks its own values when it is made, naming the key, so a bad
value is refused before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

# Secret lives with the queue settings, which need one too: notifier imports nothing of service.
from notifier.settings import NO_SECRET as NO_SECRET
from notifier.settings import QUEUE_ALIASES, QueueSettings, read_config, section
from notifier.settings import Secret as Secret
from service.errors import ConfigError
from service.push.endpoints import WebhookSettings, webhook_settings


def _require(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"Config '{key}' must be {rule}, not {value!r}.")


def _positive(section: object, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value > 0, f"{prefix}.{name}", "positive", value)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024
    #: On SIGTERM, the time requests in flight have, in all; the stop takes about a second more.
    shutdown_grace_seconds: float = 5.0
    #: Open connections past which a new one is answered 503 at once (keep-alive ones count).
    max_connections: int = 1024
    #: "uvloop" (libuv: about a quarter less CPU per request) or "asyncio" (the standard loop).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "server.port", "a port number", self.port)
        _positive(self, "server", "max_body_bytes", "max_connections")
        grace = self.shutdown_grace_seconds
        _require(grace >= 0, "server.shutdown_grace_seconds", "0 or more", grace)


@dataclass(frozen=True)
class DatabaseSettings:
    #: The database, as SQLAlchemy writes it (sqlite:///relative/path, sqlite:////absolute/path);
    #: empty means the SQLite file `path`.
    url: str = ""
    path: str = "verifications.db"
    #: The file holding the code secret; empty means `<path>.secret`.
    secret_file: str = ""
    #: The code secret itself (hex, 32 bytes or more); when set, no file is used.
    secret: Secret = NO_SECRET
    #: How long a write waits for a lock held by another connection before it fails (503).
    busy_timeout_ms: int = 5000
    #: How long a code or cancel is retried while the database fails, before answering 503.
    write_retry_seconds: float = 2.0
    #: PostgreSQL: how long a replica's work waits, once it stops renewing its lease (killed,
    #: paused, cut off), before the others take it over; renewed every fifth of it.
    lease_seconds: float = 5.0
    #: PostgreSQL: this replica's name among those sharing the database, unique to each; a
    #: restart under the same name takes its work back at once. Empty: `<hostname>:<port>`.
    replica_name: str = ""

    def __post_init__(self) -> None:
        for name in ("busy_timeout_ms", "write_retry_seconds"):
            value = getattr(self, name)
            _require(value >= 0, f"database.{name}", "0 or more", value)
        lease = self.lease_seconds
        _require(0.5 <= lease <= 300, "database.lease_seconds", "between 0.5 and 300", lease)
        # Here, not at the top: the store's package reads these settings.
        from service.store import check_url, database_url

        check_url(database_url(self))  # refuses a scheme no store opens, naming the key


@dataclass(frozen=True)
class VerificationSettings:
    code_length: int = 6
    ttl_seconds: float = 90.0
    max_attempts: int = 3
    max_reference_length: int = 200
    #: Commands (codes, cancels, resends) waiting for one verification at once; 429 past it.
    max_queued_commands: int = 16

    def __post_init__(self) -> None:
        length = self.code_length
        _require(4 <= length <= 10, "verification.code_length", "between 4 and 10", length)
        _positive(
            self,
            "verification",
            "ttl_seconds",
            "max_attempts",
            "max_reference_length",
            "max_queued_commands",
        )


@dataclass(frozen=True)
class SmsSettings:
    #: "twilio", "console", or "auto": Twilio when credentials are set, else the console.
    sender: Literal["twilio", "console", "auto"] = "auto"
    account_sid: str = ""
    auth_token: Secret = NO_SECRET
    from_number: str = ""
    messaging_service_sid: str = ""
    api_base_url: str = "https://api.twilio.com"
    template: str = "Your verification code is {code}. It expires in {expires_in}."
    timeout_seconds: float = 10.0
    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    #: SMS requests in flight at once: a recovery with thousands to resend waits its turn
    #: before its time-out starts, instead of timing out in the queue for a connection.
    max_concurrent_sends: int = 50

    def __post_init__(self) -> None:
        _positive(self, "sms", "timeout_seconds", "max_concurrent_sends")
        delays = self.retry_delays
        _require(all(d >= 0 for d in delays), "sms.retry_delays", "waits of 0 s or more", delays)


@dataclass(frozen=True)
class AuthSettings:
    api_keys: tuple[Secret, ...] = ()
    allow_unauthenticated: bool = False


SID_DIGITS = "[0-9a-fA-F]{32}"


@dataclass(frozen=True)
class VerifyServiceSettings:
    """A Twilio Verify Service of its own settings; each left 0 or "" is the service's own."""

    sid: str = ""
    friendly_name: str = ""
    code_length: int = 0
    ttl_seconds: float = 0.0
    max_attempts: int = 0
    #: The SMS, as `sms.template`.
    template: str = ""

    def __post_init__(self) -> None:
        where = f"verify_v2.services[{self.sid or '?'}]"
        ok = re.fullmatch("VA" + SID_DIGITS, self.sid) is not None
        _require(ok, f"{where}.sid", "VA and 32 hex digits", self.sid)
        name = self.friendly_name
        _require(0 < len(name) <= 32, f"{where}.friendly_name", "1 to 32 characters", name)
        length = self.code_length
        _require(length == 0 or 4 <= length <= 10, f"{where}.code_length", "4 to 10", length)
        _require(self.ttl_seconds >= 0, f"{where}.ttl_seconds", "0 or more", self.ttl_seconds)
        _require(self.max_attempts >= 0, f"{where}.max_attempts", "0 or more", self.max_attempts)


@dataclass(frozen=True)
class VerifyV2Settings:
    """The Twilio Verify v2 surface at /v2: its Services, the first of the service's settings."""

    enabled: bool = True
    #: The Service's SID, which the SDK's `services(SID)` names.
    service_sid: str = "VA" + "0" * 32
    friendly_name: str = "Phone verification"
    #: The `account_sid` shown when the caller signs in with an `SK...` key; an `AC...` username
    #: is shown as given.
    account_sid: str = "AC" + "0" * 32
    #: Where clients reach the surface, for the absolute `url` fields ("https://verify.example");
    #: empty means the request's own scheme and Host.
    public_base_url: str = ""
    #: More Services, `[[verify_v2.services]]`, each with settings of its own.
    services: tuple[VerifyServiceSettings, ...] = ()

    def __post_init__(self) -> None:
        for name, prefix in (("service_sid", "VA"), ("account_sid", "AC")):
            value = getattr(self, name)
            ok = re.fullmatch(prefix + SID_DIGITS, value) is not None
            _require(ok, f"verify_v2.{name}", f"{prefix} and 32 hex digits", value)
        sids = [s.sid.upper() for s in self.all_services()]
        twice = sorted({sid for sid in sids if sids.count(sid) > 1})
        _require(not twice, "verify_v2.services", "Services of distinct SIDs", twice)
        name = self.friendly_name
        _require(0 < len(name) <= 32, "verify_v2.friendly_name", "1 to 32 characters", name)
        url = self.public_base_url
        ok = url == "" or url.startswith(("http://", "https://"))
        _require(ok, "verify_v2.public_base_url", "empty or an http(s) URL", url)

    def all_services(self) -> tuple[VerifyServiceSettings, ...]:
        """Every Service: `service_sid` first, of the service's own settings, then `services`."""
        first = VerifyServiceSettings(sid=self.service_sid, friendly_name=self.friendly_name)
        return (first, *self.services)


@dataclass(frozen=True)
class LimitSettings:
    sms_per_phone: int = 5
    sms_per_phone_window_seconds: float = 600.0
    starts_per_key_per_minute: int = 600
    sms_per_minute: int = 6000
    #: Calling codes or regions SMS may go to, e.g. ["US", "CA", "44"]; empty allows every one.
    allowed_country_codes: tuple[str, ...] = ()
    #: phonenumbers' number types SMS may go to, in lower case; empty allows every type.
    allowed_number_types: tuple[str, ...] = (
        "mobile",
        "fixed_line_or_mobile",
        "voip",
        "personal_number",
    )

    def __post_init__(self) -> None:
        # 0 SMS per window would refuse every start: surely not what was meant.
        _positive(
            self,
            "limits",
            "sms_per_phone",
            "sms_per_phone_window_seconds",
            "starts_per_key_per_minute",
            "sms_per_minute",
        )
        # Here, not at the top: the destination policy's module reads these settings.
        from service.destinations import Destinations

        Destinations.from_settings(self)  # refuses names that mean nothing, naming the key


@dataclass(frozen=True)
class RetentionSettings:
    #: Finished verifications stay queryable this long, then are deleted.
    keep_finished_seconds: float = 7 * 24 * 3600.0
    #: The phone number is masked in finished verifications after this long.
    redact_phone_after_seconds: float = 24 * 3600.0
    #: Outcomes already delivered to the queue are deleted from the outbox after this long.
    keep_sent_outcomes_seconds: float = 24 * 3600.0
    sweep_interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        _positive(
            self,
            "retention",
            "keep_finished_seconds",
            "redact_phone_after_seconds",
            "keep_sent_outcomes_seconds",
            "sweep_interval_seconds",
        )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    verify_v2: VerifyV2Settings = field(default_factory=VerifyV2Settings)


#: Conventional variable names honoured when the VERIFY_* one is not set, by section and key.
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "sms": {"account_sid": ("TWILIO_ACCOUNT_SID",), "auth_token": ("TWILIO_AUTH_TOKEN",)},
    "queue": QUEUE_ALIASES,
}


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (a missing default file is fine, a missing named file is not) and the env."""
    return settings_from(read_config(path), os.environ if env is None else env)


def settings_from(tables: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    # The loader is notifier's, which reads its own [queue] the same way: one loader, two users.
    unknown = set(tables) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"Config has unknown section(s): {', '.join(sorted(unknown))}.")
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        table = tables.get(f.name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"Config '[{f.name}]' must be a table.")
        if f.name == "webhooks":  # a list of endpoints besides its keys: read by its own module
            sections[f.name] = webhook_settings(table, env)
            continue
        cls = get_type_hints(Settings)[f.name]
        sections[f.name] = section(cls, f.name, table, env, ALIASES.get(f.name))
    return Settings(**sections)
