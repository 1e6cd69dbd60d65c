"""Structured logs: one JSON object a line, with the verification id where there is one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

#: Attributes every LogRecord has; anything else was passed in `extra` and is worth showing.
STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access lines would repeat ids in URLs at a rate no one reads; errors are logged anyway.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The twilio SDK logs every request's headers at INFO: a dozen lines per SMS, no news.
    logging.getLogger("twilio").setLevel(logging.WARNING)
