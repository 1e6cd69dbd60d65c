"""Starting the service: settings it cannot honour stop it at once, with a message naming them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.api import API_KEY

pytestmark = pytest.mark.slow  # each test runs the service as a process


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("VERIFY_LIMITS_SMS_PER_PHONE", "0", "'limits.sms_per_phone' must be positive"),
        ("VERIFY_LIMITS_SMS_PER_MINUTE", "-5", "'limits.sms_per_minute' must be positive"),
        (
            "VERIFY_QUEUE_REFUSED_RETRY_SECONDS",
            "0",
            "'queue.refused_retry_seconds' must be positive",
        ),
        (
            # The SQS client is made only once listening: its endpoint is checked before.
            "VERIFY_QUEUE_ENDPOINT_URL",
            "localhost:4566",
            "'queue.endpoint_url' must be an http:// or https:// URL with a host",
        ),
        ("VERIFY_QUEUE_REGION", "not a region!", "'queue.region' must be an AWS region"),
        (
            "VERIFY_SERVER_EVENT_LOOP",
            "trio",
            "'server.event_loop' must be one of 'uvloop', 'asyncio'",
        ),
        ("VERIFY_SERVER_MAX_CONNECTIONS", "0", "'server.max_connections' must be positive"),
        ("VERIFY_SMS_SENDER", "carrier-pigeon", "'sms.sender' must be one of 'twilio', 'console'"),
        ("VERIFY_SMS_MAX_CONCURRENT_SENDS", "0", "'sms.max_concurrent_sends' must be positive"),
        ("VERIFY_VERIFICATION_CODE_LENGTH", "12", "'verification.code_length' must be between 4"),
        ("VERIFY_VERIFICATION_TTL_SECONDS", "0", "'verification.ttl_seconds' must be positive"),
        ("VERIFY_RETENTION_SWEEP_INTERVAL_SECONDS", "0", "'retention.sweep_interval_seconds'"),
        ("VERIFY_DATABASE_BUSY_TIMEOUT_MS", "-1", "'database.busy_timeout_ms' must be 0 or more"),
        ("VERIFY_LIMITS_ALLOWED_NUMBER_TYPES", "mobil", "'limits.allowed_number_types'"),
    ],
)
def test_unusable_settings_stop_the_service_before_it_listens(
    tmp_path: Path, setting: str, value: str, named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERIFY_", "TWILIO_"))}
    env |= {
        # This checkout's service, even where the one installed is another's (a worktree's).
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "VERIFY_DATABASE_PATH": str(tmp_path / "verifications.db"),
        "VERIFY_AUTH_API_KEYS": API_KEY,
        "VERIFY_QUEUE_ENABLED": "false",
        "VERIFY_SERVER_PORT": "1",  # never reached: binding it would fail
        setting: value,
    }
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr and named in done.stderr, done.stderr
    assert not (tmp_path / "verifications.db").exists(), "nothing is created"
