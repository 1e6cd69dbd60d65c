"""The notifier's settings: the `[queue]` table and its variables, read as the service does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notifier.settings import ConfigError, QueueSettings, load_queue_settings
from service.config import load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config.toml"

ENV = {
    "VERIFY_QUEUE_NAME": "from-env.fifo",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "VERIFY_QUEUE_RETRY_DELAYS": "0.1, 0.2",
    "VERIFY_QUEUE_CREATE": "yes",
    "VERIFY_QUEUE_SIGNING_KEY": "a-key",
}


@pytest.mark.parametrize("env", [{}, ENV], ids=["file", "environment"])
def test_the_queue_is_read_as_the_service_reads_it(env: dict[str, str]) -> None:
    assert load_queue_settings(CONFIG, env) == load_settings(CONFIG, env).queue


def test_the_variables_override_the_file_and_the_aws_names_are_honoured(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[queue]\nname = "from-file"\nregion = "us-west-2"\n')

    settings = load_queue_settings(config, ENV)

    assert (settings.name, settings.region) == ("from-env.fifo", "eu-west-1")
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    assert settings.retry_delays == (0.1, 0.2)
    assert settings.create and settings.fifo
    assert settings.signing_key == "a-key" and "a-key" not in repr(settings)
    own = {**ENV, "VERIFY_QUEUE_REGION": "ap-south-1"}
    assert load_queue_settings(config, own).region == "ap-south-1"


def test_only_the_queue_table_is_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = "not a port"\n[elsewhere]\nx = 1\n')

    assert load_queue_settings(config, {}) == QueueSettings()
    assert load_queue_settings(None, {}) == QueueSettings()


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('[queue]\nnmae = "x"\n', {}, "Config '[queue]' has unknown key(s): nmae."),
        ("queue = 1\n", {}, "Config '[queue]' must be a table."),
        ("[queue]\ncreate = 2\n", {}, "Config 'queue.create' must be a bool, not 2."),
        ("", {"VERIFY_QUEUE_DEAD_LETTER_MAX_RECEIVES": "x"}, "'queue.dead_letter_max_receives'"),
        ("[queue\n", {}, "is not valid TOML"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_queue_settings(config, env)


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_queue_settings(tmp_path / "missing.toml", {})
