"""Settings, parsed once from `config.toml` and the environment into frozen dataclasses.

Every setting has a default, so the service runs with no file at all. A setting `key` of section
`[section]` is overridden by the variable `VERIFY_SECTION_KEY`; a few also honour the names their
ecosystems use (`TWILIO_AUTH_TOKEN`, `AWS_ENDPOINT_URL`, ...). Lists come from the environment
comma-separated.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

# Secret lives with the queue settings, which need one too: notifier imports nothing of service.
from notifier.settings import NO_SECRET as NO_SECRET
from notifier.settings import QueueSettings
from notifier.settings import Secret as Secret
from service.errors import ConfigError

ENV_PREFIX = "VERIFY"


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
    event_loop: str = "uvloop"


@dataclass(frozen=True)
class DatabaseSettings:
    path: str = "verifications.db"
    #: The file holding the code secret; empty means `<path>.secret`.
    secret_file: str = ""
    #: The code secret itself (hex, 32 bytes or more); when set, no file is used.
    secret: Secret = NO_SECRET
    #: How long a write waits for a lock held by another connection before it fails (503).
    busy_timeout_ms: int = 5000
    #: How long a code or cancel is retried while the database fails, before answering 503.
    write_retry_seconds: float = 2.0


@dataclass(frozen=True)
class VerificationSettings:
    code_length: int = 6
    ttl_seconds: float = 90.0
    max_attempts: int = 3
    max_reference_length: int = 200
    #: Commands (codes, cancels, resends) waiting for one verification at once; 429 past it.
    max_queued_commands: int = 16


@dataclass(frozen=True)
class SmsSettings:
    #: "twilio", "console", or "auto": Twilio when credentials are set, else the console.
    sender: str = "auto"
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


@dataclass(frozen=True)
class AuthSettings:
    api_keys: tuple[Secret, ...] = ()
    allow_unauthenticated: bool = False


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


@dataclass(frozen=True)
class RetentionSettings:
    #: Finished verifications stay queryable this long, then are deleted.
    keep_finished_seconds: float = 7 * 24 * 3600.0
    #: The phone number is masked in finished verifications after this long.
    redact_phone_after_seconds: float = 24 * 3600.0
    #: Outcomes already delivered to the queue are deleted from the outbox after this long.
    keep_sent_outcomes_seconds: float = 24 * 3600.0
    sweep_interval_seconds: float = 60.0


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


#: Conventional variable names honoured when the VERIFY_* one is not set.
ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("sms", "account_sid"): ("TWILIO_ACCOUNT_SID",),
    ("sms", "auth_token"): ("TWILIO_AUTH_TOKEN",),
    ("queue", "endpoint_url"): ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"),
    ("queue", "region"): ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (a missing default file is fine, a missing named file is not) and the env."""
    env = os.environ if env is None else env
    tables: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"Config file '{file}' does not exist.")
        try:
            tables = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file '{file}' is not valid TOML: {exc}") from exc
    return settings_from(tables, env)


def settings_from(tables: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    unknown = set(tables) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"Config has unknown section(s): {', '.join(sorted(unknown))}.")
    sections = {}
    for f in dataclasses.fields(Settings):
        cls = get_type_hints(Settings)[f.name]
        table = tables.get(f.name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"Config '[{f.name}]' must be a table.")
        sections[f.name] = _section(cls, f.name, table, env)
    return Settings(**sections)


def env_names(section: str, key: str) -> tuple[str, ...]:
    """The variables that set `[section] key`, the project's own first."""
    own = f"{ENV_PREFIX}_{section}_{key}".upper()
    return (own, *ALIASES.get((section, key), ()))


def _section(cls: type[Any], section: str, table: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ConfigError(f"Config '[{section}]' has unknown key(s): {', '.join(sorted(unknown))}.")
    values: dict[str, Any] = {}
    for name in names:
        raw = _from_env(section, name, env)
        if raw is not None:
            values[name] = _coerce(hints[name], raw, f"{section}.{name}", from_env=True)
        elif name in table:
            values[name] = _coerce(hints[name], table[name], f"{section}.{name}", from_env=False)
    return cls(**values)


def _from_env(section: str, key: str, env: Mapping[str, str]) -> str | None:
    for name in env_names(section, key):
        if env.get(name, "") != "":
            return env[name]
    return None


def _coerce(hint: Any, raw: Any, where: str, *, from_env: bool) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if origin is tuple:
        item = get_args(hint)[0]
        items = [p.strip() for p in raw.split(",") if p.strip()] if from_env else raw
        if not isinstance(items, list):
            raise ConfigError(f"Config '{where}' must be a list.")
        return tuple(_coerce(item, i, where, from_env=from_env) for i in items)
    try:
        if hint is bool:
            return _boolean(raw)
        if hint in (int, float):
            if isinstance(raw, bool):
                raise ValueError
            return hint(raw)
        if hint in (str, Secret):
            if not isinstance(raw, str):
                raise ValueError
            return hint(raw)
    except ValueError:
        raise ConfigError(f"Config '{where}' must be a {hint.__name__}, not {raw!r}.") from None
    raise ConfigError(f"Config '{where}' has a type the loader does not know: {hint}.")


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError
