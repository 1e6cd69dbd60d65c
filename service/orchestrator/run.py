"""A run: what the orchestrator holds in memory for one pending verification, and its inbox."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from service.models import Verification
from service.orchestrator.decisions import Command

#: A command and the future its caller waits on; the SMS activity's reports have none.
Letter = tuple[Command, asyncio.Future[Verification] | None]


@dataclass(slots=True, eq=False)
class Run:
    """What the orchestrator holds in memory for one pending verification.

    `verification` is replaced, never changed in place, so handing it out is handing a snapshot.
    Everything else is made only when needed: most verifications get one command in their life,
    and the ones waiting are what a process holds by the hundred thousand.
    """

    verification: Verification
    inbox: deque[Letter] | None = None
    waiter: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None
    #: The SMS activity, while one is in flight.
    sending: asyncio.Task[None] | None = None

    def deliver(self, command: Command, reply: asyncio.Future[Verification] | None = None) -> None:
        # Buffered like raiseEvent: a command that arrives while the task is busy is not lost.
        if self.inbox is None:
            self.inbox = deque()
        self.inbox.append((command, reply))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def next_command(self) -> Letter | None:
        return self.inbox.popleft() if self.inbox else None

    @property
    def queued(self) -> int:
        return len(self.inbox) if self.inbox else 0
