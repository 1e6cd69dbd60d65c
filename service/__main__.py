"""`python -m service [--config PATH]`: run the verification service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

from service.app import create_app
from service.config import load_settings
from service.errors import ConfigError
from service.logs import setup_logging

log = logging.getLogger("service")

DEFAULT_CONFIG = "config.toml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument(
        "--config", help=f"settings file (default: ./{DEFAULT_CONFIG} if it exists)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    try:
        settings = load_settings(path)
        app = create_app(settings)
        loop = new_event_loop(settings.server.event_loop)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    server = settings.server
    log.info("listening on http://%s:%d", server.host, server.port)
    web.run_app(
        app,
        host=server.host,
        port=server.port,
        shutdown_timeout=server.shutdown_grace_seconds,
        print=None,
        access_log=None,
        loop=loop,
    )


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        try:
            import uvloop  # only here: the library and the tests run on any loop
        except ImportError:  # not installed on Windows
            raise ConfigError(
                "Config 'server.event_loop' is 'uvloop', which is not installed here; set it"
                " to 'asyncio'."
            ) from None
        return uvloop.new_event_loop()
    raise ConfigError(f"Config 'server.event_loop' must be 'uvloop' or 'asyncio', not {kind!r}.")


if __name__ == "__main__":
    main()
