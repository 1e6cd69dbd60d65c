"""`python -m service [--config PATH]`: run the verification service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from service import server
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
        server.check_settings(settings.server)
        app = create_app(settings)
        loop = new_event_loop(settings.server.event_loop)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    # Returns once stopped (SIGTERM or SIGINT): exit status 0.
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        try:
            runner.run(server.serve(app, settings.server))
        except ConfigError as exc:
            # Found only once starting: a database another process holds, an open secret file.
            log.error("cannot start: %s", exc)
            sys.exit(2)
        # Stopped: everything is on disk and the store is closed. Leaving the runner would
        # cancel every idle task one by one, and the interpreter then free a million objects:
        # seconds that change nothing. The process ends here instead.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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
