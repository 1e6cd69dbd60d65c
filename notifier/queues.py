"""The outcome queue: the SQS client that reaches it, finding or creating it, and its failures.

QueueError                   the queue cannot be used as configured
  └── QueueNotFound          no queue by that name or URL; create it, or set `[queue] create`
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import aioboto3  # type: ignore[import-untyped]
import aiohttp
from botocore import exceptions as boto  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from notifier.settings import QueueSettings

#: An aiobotocore SQS client; `types-aiobotocore-sqs` would type it, until then it is Any.
SqsClient: TypeAlias = Any

#: Dead-letter queues keep messages for the longest SQS allows, so someone has time to look.
DEAD_LETTER_RETENTION_SECONDS = 14 * 24 * 3600

NOT_FOUND_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestThrottled",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "KmsThrottled",
        "KMS.ThrottlingException",
        "SlowDown",
    }
)
#: Refused, reset or timed-out connections, wherever in the client stack they surface: aiohttp
#: is aiobotocore's transport, and its errors while a response body is read come through as is.
NETWORK_ERRORS = (
    boto.ConnectionError,
    boto.HTTPClientError,
    boto.IncompleteReadError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)


class QueueError(Exception):
    pass


class QueueNotFound(QueueError):
    pass


@asynccontextmanager
async def sqs_client(settings: QueueSettings) -> AsyncIterator[SqsClient]:
    """Open an SQS client for `settings`; an empty endpoint leaves AWS's own chain to choose."""
    options: dict[str, Any] = {"region_name": settings.region, "config": client_config()}
    if settings.endpoint_url:
        options["endpoint_url"] = settings.endpoint_url
        if _is_local(settings.endpoint_url) and not _credentials_in_environment():
            # LocalStack takes any key. Only for a local endpoint: another one may be AWS itself
            # (a VPC endpoint), where the instance's role must be found as usual.
            options["aws_access_key_id"] = "test"
            options["aws_secret_access_key"] = "test"
    async with aioboto3.Session().client("sqs", **options) as client:
        yield client


def client_config() -> Config:
    """Short connect time-out and no SDK retries: the publisher and consumer own their back-off."""
    return Config(
        connect_timeout=5,
        # Above the 20 s long poll, so a receive is never cut short by the client.
        read_timeout=30,
        retries={"total_max_attempts": 1},
        max_pool_connections=25,
        # Requests are built by this package, from settings checked when loaded; checking each
        # against the model again costs a tenth of a send. A bad queue name fails at SQS instead.
        parameter_validation=False,
    )


def _is_local(endpoint_url: str) -> bool:
    """Loopback, or a host named for LocalStack (its compose service, *.localstack.cloud)."""
    host = urlsplit(endpoint_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.") or "localstack" in host


def _credentials_in_environment() -> bool:
    return any(
        os.environ.get(name)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
    )


async def resolve_queue_url(client: SqsClient, settings: QueueSettings) -> str:
    """The configured URL, else the queue named in settings, created first if asked to."""
    if settings.url:
        return settings.url
    if settings.create:
        return await create_queue(client, settings)
    return await queue_url(client, settings.name)


async def queue_url(client: SqsClient, name: str) -> str:
    try:
        response = await client.get_queue_url(QueueName=name)
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND_CODES:
            raise QueueNotFound(
                f"Queue '{name}' does not exist; create it, or set [queue] create = true."
            ) from None
        raise
    return str(response["QueueUrl"])


async def create_queue(client: SqsClient, settings: QueueSettings) -> str:
    """Create the queue and its dead-letter queue; when they exist, update their settings."""
    fifo = {"FifoQueue": "true"} if settings.fifo else {}
    dead_letter_url = await _ensure_queue(
        client,
        dead_letter_name(settings.name),
        {**fifo, "MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS)},
    )
    attributes = await client.get_queue_attributes(
        QueueUrl=dead_letter_url, AttributeNames=["QueueArn"]
    )
    redrive = {
        "deadLetterTargetArn": attributes["Attributes"]["QueueArn"],
        "maxReceiveCount": str(settings.dead_letter_max_receives),
    }
    # Deduplication is by verification id, which the publisher sets; a body hash would not do.
    dedup = {"ContentBasedDeduplication": "false"} if settings.fifo else {}
    return await _ensure_queue(
        client, settings.name, {**fifo, **dedup, "RedrivePolicy": json.dumps(redrive)}
    )


def dead_letter_name(name: str) -> str:
    """`outcomes` -> `outcomes-dlq`; `outcomes.fifo` -> `outcomes-dlq.fifo`."""
    if name.endswith(".fifo"):
        return f"{name.removesuffix('.fifo')}-dlq.fifo"
    return f"{name}-dlq"


async def _ensure_queue(client: SqsClient, name: str, attributes: dict[str, str]) -> str:
    try:
        response = await client.create_queue(QueueName=name, Attributes=attributes)
        return str(response["QueueUrl"])
    except ClientError as exc:
        if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
    # It exists with other attributes: FifoQueue cannot change, the rest can be set.
    url = await queue_url(client, name)
    mutable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
    await client.set_queue_attributes(QueueUrl=url, Attributes=mutable)
    return url


def error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("QueryErrorCode") or error.get("Code") or "")


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on their own: no connection, time-outs, throttling, 5xx."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        error = exc.response.get("Error", {})
        codes = {error.get("Code"), error.get("QueryErrorCode")}
        return status >= 500 or status == 429 or bool(codes & TRANSIENT_CODES)
    return isinstance(exc, NETWORK_ERRORS)
