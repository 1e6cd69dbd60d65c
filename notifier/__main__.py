"""`python -m notifier`: print each outcome on the queue as a JSON line, acknowledging it.

`python -m notifier webhook --port P --secret whsec_...` receives them by webhook instead
(`notifier.webhooks`).

The queue comes from the `[queue]` table of the service's config and its environment variables
(the rest of that file is the service's, and not read); the options override them. With
`queue.signing_key` set (VERIFY_QUEUE_SIGNING_KEY), messages whose signature is missing or wrong
are not printed: they are left for the DLQ.
Stops on SIGINT or SIGTERM once the outcome in hand is out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from notifier import webhooks
from notifier.consumer import Consumer, Outcome
from notifier.queues import QueueError, resolve_queue_url, sqs_client
from notifier.settings import ConfigError, QueueSettings, load_queue_settings

DEFAULT_CONFIG = Path("config.toml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m notifier",
        description="Consume verification outcomes and print each as one JSON line. "
        "Messages are deleted once printed. `python -m notifier webhook --help`: receive"
        " them by webhook instead.",
    )
    parser.add_argument("--config", type=Path, help="config file (default: ./config.toml if any)")
    parser.add_argument("--queue-url", help="queue URL, instead of looking the name up")
    parser.add_argument("--endpoint-url", help="SQS endpoint, e.g. http://127.0.0.1:4566")
    parser.add_argument("--region", help="AWS region")
    parser.add_argument("--create", action="store_true", help="create the queue and its DLQ")
    parser.add_argument("--wait-seconds", type=int, default=20, help="long-poll time (0-20)")
    return parser.parse_args(argv)


def queue_settings(args: argparse.Namespace) -> QueueSettings:
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    settings = load_queue_settings(path)
    overrides = {
        "url": args.queue_url,
        "endpoint_url": args.endpoint_url,
        "region": args.region,
        "create": args.create or None,
    }
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


async def print_outcome(outcome: Outcome) -> None:
    sys.stdout.write(json.dumps(outcome.raw, separators=(",", ":")) + "\n")
    # Flushed per line so a pipe sees each outcome as it is consumed, not when a buffer fills.
    sys.stdout.flush()


async def consume(settings: QueueSettings, wait_seconds: int) -> None:
    async with sqs_client(settings) as client:
        url = await resolve_queue_url(client, settings)
        # With the service's signing key, messages it did not sign are left for the DLQ.
        consumer = Consumer(
            client, url, print_outcome, wait_seconds=wait_seconds, signing_key=settings.signing_key
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, consumer.stop)
        logging.getLogger(__name__).info("Consuming outcomes from %s", url)
        await consumer.run()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["webhook"]:
        webhooks.main(arguments[1:])
        return
    args = parse_args(argv)
    try:
        asyncio.run(consume(queue_settings(args), args.wait_seconds))
    except (ConfigError, QueueError, ClientError, BotoCoreError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
