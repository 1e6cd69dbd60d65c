"""The consumer library stands alone: nothing of the service, nor of the service's dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

NOTIFIER = Path(__file__).resolve().parents[2] / "notifier"
#: Besides the standard library: the SQS client, and aiohttp under it (aiobotocore's transport,
#: whose errors can reach us unwrapped while a response body is read); the webhook receiver's
#: server and signatures.
ALLOWED = {"notifier", "aioboto3", "botocore", "aiohttp", "standardwebhooks"}
#: The service and what it needs that the notifier does not.
BLOCKED = [
    "service",
    "aiosqlite",
    "orjson",
    "phonenumbers",
    "prometheus_client",
    "twilio",
    "uvloop",
]

SCRIPT = f"""
import runpy, sys
sys.path.insert(0, {str(NOTIFIER.parent)!r})  # this checkout's, whatever is installed
for name in {BLOCKED!r}:
    sys.modules[name] = None  # importing it now raises ImportError
import notifier.consumer, notifier.events, notifier.queues, notifier.settings, notifier.__main__
import notifier.webhooks
sys.argv = ["notifier", "--help"]
runpy.run_module("notifier", run_name="__main__")
"""


def test_python_m_notifier_runs_where_the_service_cannot_be_imported(tmp_path: Path) -> None:
    # From an empty folder: the checkout's config.toml, and its service/, are not on the path.
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m notifier")


def test_notifier_imports_only_the_standard_library_and_the_sqs_client() -> None:
    imported: dict[str, str] = {}
    for path in NOTIFIER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.partition(".")[0], path.name)
    foreign = {
        name: where
        for name, where in imported.items()
        if name not in ALLOWED and name not in sys.stdlib_module_names
    }
    assert foreign == {}
