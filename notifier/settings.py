"""Where the outcome queue is and how to reach it; shared by the publisher and the consumers."""

from __future__ import annotations

from dataclasses import dataclass


class Secret(str):
    """A string that does not show itself in reprs, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


NO_SECRET = Secret("")


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
    #: When set, each message is signed (see `notifier.messages.sign`) and consumers given the
    #: key refuse messages whose signature is missing or wrong.
    signing_key: Secret = NO_SECRET

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo") or self.url.endswith(".fifo")
