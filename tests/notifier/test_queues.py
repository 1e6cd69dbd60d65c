import json
import uuid

import pytest

from notifier.queues import (
    QueueNotFound,
    SqsClient,
    dead_letter_name,
    resolve_queue_url,
    sqs_client,
)
from notifier.settings import QueueSettings
from tests.support.localstack import REGION


async def attributes(client: SqsClient, url: str) -> dict[str, str]:
    response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    return dict(response["Attributes"])


async def delete_queues(client: SqsClient, *names: str) -> None:
    for name in names:
        url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
        await client.delete_queue(QueueUrl=url)


def test_dead_letter_names() -> None:
    assert dead_letter_name("outcomes") == "outcomes-dlq"
    assert dead_letter_name("outcomes.fifo") == "outcomes-dlq.fifo"


async def test_create_makes_the_queue_with_a_dead_letter_queue_and_is_idempotent(
    sqs_client: SqsClient,
) -> None:
    name = f"create-{uuid.uuid4().hex[:8]}"
    settings = QueueSettings(name=name, create=True, dead_letter_max_receives=3)
    try:
        url = await resolve_queue_url(sqs_client, settings)
        redrive = json.loads((await attributes(sqs_client, url))["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(f":{name}-dlq")
        assert int(redrive["maxReceiveCount"]) == 3

        assert await resolve_queue_url(sqs_client, settings) == url
        changed = QueueSettings(name=name, create=True, dead_letter_max_receives=7)
        assert await resolve_queue_url(sqs_client, changed) == url
        redrive = json.loads((await attributes(sqs_client, url))["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == 7
    finally:
        await delete_queues(sqs_client, name, f"{name}-dlq")


async def test_create_fifo_queue_deduplicates_by_id_not_content(sqs_client: SqsClient) -> None:
    name = f"create-{uuid.uuid4().hex[:8]}.fifo"
    try:
        url = await resolve_queue_url(sqs_client, QueueSettings(name=name, create=True))
        queue = await attributes(sqs_client, url)
        assert queue["FifoQueue"] == "true"
        assert queue["ContentBasedDeduplication"] == "false"
        dead_letter_url = (await sqs_client.get_queue_url(QueueName=dead_letter_name(name)))[
            "QueueUrl"
        ]
        assert (await attributes(sqs_client, dead_letter_url))["FifoQueue"] == "true"
    finally:
        await delete_queues(sqs_client, name, dead_letter_name(name))


async def test_existing_queue_is_looked_up_by_name(
    sqs_client: SqsClient, queue_settings: QueueSettings
) -> None:
    by_name = QueueSettings(name=queue_settings.name)
    assert await resolve_queue_url(sqs_client, by_name) == queue_settings.url


async def test_missing_queue_is_named_in_the_error(sqs_client: SqsClient) -> None:
    with pytest.raises(QueueNotFound, match="Queue 'no-such-queue' does not exist"):
        await resolve_queue_url(sqs_client, QueueSettings(name="no-such-queue"))


async def test_configured_url_is_used_as_is() -> None:
    settings = QueueSettings(url="http://127.0.0.1:9/000000000000/q", name="ignored", create=True)
    assert await resolve_queue_url(None, settings) == settings.url


@pytest.mark.usefixtures("no_aws_credentials")
async def test_client_for_a_local_endpoint_works_without_credentials(
    localstack_endpoint: str,
) -> None:
    settings = QueueSettings(endpoint_url=localstack_endpoint, region=REGION)
    async with sqs_client(settings) as client:
        await client.list_queues()


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing for the credential chain to find, and no instance metadata service to ask."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.mark.usefixtures("no_aws_credentials")
async def test_client_for_a_remote_endpoint_invents_no_credentials() -> None:
    settings = QueueSettings(endpoint_url="https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com")
    async with sqs_client(settings) as client:
        assert client._get_credentials() is None  # botocore's own view of what it signs with


@pytest.mark.usefixtures("no_aws_credentials")
async def test_client_without_endpoint_follows_aws_endpoint_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    async with sqs_client(QueueSettings(region="eu-west-1")) as client:
        assert client.meta.endpoint_url == "https://sqs.eu-west-1.amazonaws.com"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    async with sqs_client(QueueSettings(region="eu-west-1")) as client:
        assert client.meta.endpoint_url == "http://127.0.0.1:4566"
