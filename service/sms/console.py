"""The console sender: local development, with no account."""

from __future__ import annotations

import uuid


class ConsoleSender:
    """Prints each message, code and all, to stdout: for local development, with no account.

    Stdout only: the logs go to stderr, and a code must never reach wherever they are shipped.
    """

    ready = True

    async def open(self) -> None:
        pass

    async def send(self, to: str, body: str) -> str:
        print(f"SMS to {to}: {body}", flush=True)
        return f"console-{uuid.uuid4().hex}"

    async def close(self) -> None:
        pass
