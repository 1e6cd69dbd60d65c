"""Where the outcome queue is and how to reach it; shared by the publisher and the consumers.

`load_queue_settings` reads the `[queue]` table of the service's `config.toml` and the
environment as the service does: `VERIFY_QUEUE_KEY` overrides `key`, and the AWS names for the
region and endpoint are honoured when it is not set; lists come from the environment
comma-separated. Other tables are the service's, and are not read. `section` fills any frozen
settings dataclass from its table that way, so the service can read its own sections with it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

ENV_PREFIX = "VERIFY"
#: Conventional variable names honoured when the VERIFY_QUEUE_* one is not set.
QUEUE_ALIASES: dict[str, tuple[str, ...]] = {
    "endpoint_url": ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file or the key."""


class Secret(str):
    """A string that does not show itself in reprs, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


NO_SECRET = Secret("")


#: What botocore takes as a region name (its own check, made when a client is).
REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?")


@dataclass(frozen=True)
class QueueSettings:
    #: Full queue URL; when empty the queue is looked up (or created) by `name`.
    url: str = ""
    name: str = "verification-outcomes"
    region: str = "us-east-1"
    #: Empty means AWS itself (or `AWS_ENDPOINT_URL`); LocalStack is http://127.0.0.1:4566.
    endpoint_url: str = ""
    #: Create the queue and a dead-letter queue at start-up (development).
    create: bool = False
    dead_letter_max_receives: int = 5
    #: False turns publishing off: outcomes stay in the outbox until it is turned on.
    enabled: bool = True
    retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    #: An outcome SQS refuses (an invalid body) is tried again this much later, the wait
    #: doubling with each refusal up to the maximum; the others go on meanwhile.
    refused_retry_seconds: float = 60.0
    refused_retry_max_seconds: float = 3600.0
    #: When set, each message is signed (see `notifier.events.sign`) and consumers given the
    #: key refuse messages whose signature is missing or wrong.
    signing_key: Secret = NO_SECRET

    def __post_init__(self) -> None:
        # A refused record offered again at once would keep the publisher spinning on it.
        if not 0 < self.refused_retry_seconds <= self.refused_retry_max_seconds:
            raise ConfigError(
                "Config 'queue.refused_retry_seconds' must be positive, and at most"
                " 'queue.refused_retry_max_seconds'."
            )
        if not self.retry_delays or any(d < 0 for d in self.retry_delays):
            raise ConfigError(
                "Config 'queue.retry_delays' must be one or more waits of 0 s or more."
            )
        # Checked here, not when the client is made: the service makes it only once listening.
        if not REGION.fullmatch(self.region):
            raise ConfigError(
                "Config 'queue.region' must be an AWS region such as 'us-east-1',"
                f" not {self.region!r}."
            )
        try:
            endpoint = urlsplit(self.endpoint_url)
            web = endpoint.scheme in ("http", "https") and endpoint.hostname
        except ValueError:  # an unclosed [IPv6 address]
            web = False
        if self.endpoint_url and not web:
            raise ConfigError(
                "Config 'queue.endpoint_url' must be an http:// or https:// URL with a host,"
                f" not {self.endpoint_url!r}."
            )

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo") or self.url.endswith(".fifo")


def load_queue_settings(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> QueueSettings:
    """The `[queue]` table of `path` (None: defaults only) under the environment's overrides."""
    table = read_config(path).get("queue", {})
    if not isinstance(table, Mapping):
        raise ConfigError("Config '[queue]' must be a table.")
    return section(QueueSettings, "queue", table, os.environ if env is None else env, QUEUE_ALIASES)


def read_config(path: str | Path | None) -> dict[str, Any]:
    """The tables of a TOML file; a named file must exist."""
    if path is None:
        return {}
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"Config file '{file}' does not exist.")
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file '{file}' is not valid TOML: {exc}") from exc


def section(
    cls: type[T],
    name: str,
    table: Mapping[str, Any],
    env: Mapping[str, str],
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> T:
    """The frozen dataclass `cls` from the table `[name]`, each key overridden by the env."""
    hints = get_type_hints(cls)
    keys = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(table) - keys
    if unknown:
        raise ConfigError(f"Config '[{name}]' has unknown key(s): {', '.join(sorted(unknown))}.")
    values: dict[str, Any] = {}
    for key in keys:
        where = f"{name}.{key}"
        raw = _from_env(env_names(name, key, (aliases or {}).get(key, ())), env)
        if raw is not None:
            values[key] = _coerce(hints[key], raw, where, from_env=True)
        elif key in table:
            values[key] = _coerce(hints[key], table[key], where, from_env=False)
    return cls(**values)


def env_names(section: str, key: str, aliases: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The variables that set `[section] key`, the project's own first."""
    return (f"{ENV_PREFIX}_{section}_{key}".upper(), *aliases)


def _from_env(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    for name in names:
        if env.get(name, "") != "":
            return env[name]
    return None


def _coerce(hint: Any, raw: Any, where: str, *, from_env: bool) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if raw not in choices:
            named = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"Config '{where}' must be one of {named}, not {raw!r}.")
        return raw
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # A table within a section (an entry of an array of tables): from the file only.
        if from_env or not isinstance(raw, Mapping):
            raise ConfigError(f"Config '{where}' must be a table, set in the config file.")
        return section(hint, where, raw, {})
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
