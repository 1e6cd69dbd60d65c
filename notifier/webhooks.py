"""Receiving outcomes by webhook: a small server that verifies Standard Webhooks signatures.

`python -m notifier webhook --port 9000 --secret whsec_...` answers each POST whose signature
verifies under one of its secrets (and whose timestamp is within five minutes) with 204, and
prints the outcome as one JSON line, as `python -m notifier` prints those from the queue; a
missing, forged or stale signature is 401, a body that is not an outcome 400, and nothing is
printed. The service delivers at least once: a `webhook-id` seen before is answered 204 again
and not printed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from notifier.events import EVENT

log = logging.getLogger(__name__)

#: The secrets, comma-separated, when no --secret is given.
SECRETS_VARIABLE = "VERIFY_WEBHOOK_SECRETS"
#: Ids remembered for deduplication; the oldest are forgotten first.
REMEMBERED = 100_000
#: A body larger than this is no outcome: refused before it is read whole.
MAX_BODY_BYTES = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class WebhookError(Exception):
    """The request is not a verified outcome; `status` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Receiver:
    """Verifies each delivery under any of `secrets`, then hands its outcome (`data`) over."""

    def __init__(self, secrets: Sequence[str], handler: Handler) -> None:
        if not secrets:
            raise ValueError("A webhook receiver needs at least one whsec_ secret.")
        self._verifiers = [Webhook(secret) for secret in secrets]
        self._handler = handler
        self._seen: OrderedDict[str, None] = OrderedDict()

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """The outcome event of a delivery whose signature checks out; WebhookError otherwise."""
        for verifier in self._verifiers:
            try:
                envelope = verifier.verify(body, headers)
            except WebhookVerificationError:
                continue
            except ValueError:  # a signature header that is not "v1,<base64>"
                raise WebhookError(401, "malformed signature") from None
            break
        else:
            raise WebhookError(401, "no valid signature")
        if not isinstance(envelope, dict) or envelope.get("type") != EVENT:
            raise WebhookError(400, f"not a {EVENT} webhook")
        data = envelope.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise WebhookError(400, "no outcome in data")
        return data

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            outcome = self.verify(body, headers)
        except (WebhookError, UnicodeDecodeError) as exc:
            status = exc.status if isinstance(exc, WebhookError) else 400
            log.warning("refused a webhook (%d): %s", status, exc)
            return web.Response(status=status, text=str(exc))
        msg_id = headers["webhook-id"]
        if msg_id in self._seen:
            self._seen.move_to_end(msg_id)
            return web.Response(status=204)
        # Remembered only once handled: a handler that failed is answered 500, and retried.
        await self._handler(outcome)
        self._seen[msg_id] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return web.Response(status=204)

    def app(self, path: str = "/") -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(path, self.handle)
        return app


async def print_outcome(outcome: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(outcome, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m notifier webhook",
        description="Receive verification outcomes by webhook, verify their signatures, and"
        " print each as one JSON line.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on")
    parser.add_argument("--path", default="/", help="the path deliveries are POSTed to")
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        help=f"a whsec_ secret (repeat for several; default: ${SECRETS_VARIABLE}, comma-separated)",
    )
    return parser.parse_args(list(argv))


async def serve(args: argparse.Namespace, secrets: Sequence[str]) -> None:
    receiver = Receiver(secrets, print_outcome)
    runner = web.AppRunner(receiver.app(args.path), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        log.info("Receiving outcomes on http://%s:%d%s", args.host, args.port, args.path)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    secrets = args.secret or [
        s.strip() for s in os.environ.get(SECRETS_VARIABLE, "").split(",") if s.strip()
    ]
    if not secrets:
        sys.exit(f"error: no secret: pass --secret whsec_... or set {SECRETS_VARIABLE}")
    try:
        asyncio.run(serve(args, secrets))
    except (OSError, ValueError) as exc:  # a port taken; a secret that is not base64
        sys.exit(f"error: {exc}")
