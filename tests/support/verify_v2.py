"""The official twilio SDK pointed at the service, and every answer checked against Twilio's spec.

The SDK is synchronous: each call runs in a thread (`asyncio.to_thread`) against the service
listening on a real port. Its HTTP client records every answer, and `SpecCheck` validates each
against the response schema `twilio_verify_v2.json` gives its operation and status, every field
the schema lists present and no other, or against Twilio's error body for a refusal.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from openapi_schema_validator import OAS30Validator
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.http.response import Response  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared/twilio/twilio_verify_v2.json"
SERVICE_SID = "VA" + "0" * 32
ACCOUNT_SID = "AC" + "a" * 32

#: Twilio's error body, which the spec does not describe: what the SDK reads into its exception.
ERROR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["code", "message", "more_info", "status"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "more_info": {"type": "string", "format": "uri"},
        "status": {"type": "integer"},
    },
}
#: The one date form the SDK parses (`deserialize.iso8601_datetime`).
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

T = TypeVar("T")


@dataclass
class Answer:
    method: str
    url: str
    response: Response


class RecordingHttpClient(TwilioHttpClient):  # type: ignore[misc]  # untyped SDK
    """The SDK's own client, keeping every answer it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[Answer] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        response = super().request(method, url, *args, **kwargs)
        self.answers.append(Answer(method.upper(), url, response))
        return response


@dataclass
class SpecCheck:
    """Validates answers against the spec's operations; `checked` counts them by operation."""

    spec: dict[str, Any] = field(default_factory=lambda: json.loads(SPEC_PATH.read_text()))
    checked: dict[str, int] = field(default_factory=dict)

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, item in self.spec["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and method.lower() in item:
                return template, item[method.lower()]
        raise AssertionError(f"{method} {path} is no operation of the spec")

    def validate(self, answer: Answer) -> None:
        path = re.sub(r"^https?://[^/]+", "", answer.url).split("?")[0]
        template, operation = self.operation(answer.method, path)
        status = answer.response.status_code
        body = json.loads(answer.response.text)
        if status >= 400:
            schema: dict[str, Any] = ERROR_SCHEMA
            assert body["status"] == status, body
        else:
            responses = operation["responses"]
            assert str(status) in responses, (template, status, list(responses))
            content = responses[str(status)]["content"]["application/json"]["schema"]
            schema = {**content, "components": self.spec["components"]}
            self._every_field(content, body)
        OAS30Validator(schema, format_checker=OAS30Validator.FORMAT_CHECKER).validate(body)
        self._dates(body)
        key = f"{answer.method} {template} {status}"
        self.checked[key] = self.checked.get(key, 0) + 1

    def _every_field(self, schema: dict[str, Any], body: Any) -> None:
        """Every property the schema names is in the answer, and nothing else."""
        if "$ref" in schema:
            schema = self.spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        properties = schema.get("properties")
        if properties is None or not isinstance(body, dict):
            return
        if schema.get("title", "").startswith("List"):  # a page: its items are resources
            for name, value in body.items():
                if isinstance(value, list):
                    for item in value:
                        self._every_field(properties[name]["items"], item)
            return
        assert set(body) == set(properties), set(body) ^ set(properties)

    def _dates(self, value: Any) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                if name.startswith("date_") or name == "time":
                    assert item is None or DATE.match(item), (name, item)
                self._dates(item)
        elif isinstance(value, list):
            for item in value:
                self._dates(item)


class Sdk:
    """A twilio `Client` whose Verify domain is the service at `base_url`."""

    def __init__(self, base_url: str, password: str, username: str = ACCOUNT_SID) -> None:
        self.http = RecordingHttpClient()
        self.client = Client(username, password, http_client=self.http)
        self.client.verify.base_url = base_url  # the one line an app changes
        self.spec = SpecCheck()

    @property
    def service(self) -> Any:
        return self.client.verify.v2.services(SERVICE_SID)

    async def __call__(self, call: Callable[[], T]) -> T:
        """Run one SDK call in a thread; then check every answer it got against the spec."""
        seen = len(self.http.answers)
        try:
            return await asyncio.to_thread(call)
        finally:
            for answer in self.http.answers[seen:]:
                self.spec.validate(answer)
