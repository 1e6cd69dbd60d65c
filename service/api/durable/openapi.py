"""The OpenAPI 3.1 document of the Durable Functions surface, served at `DOCUMENT`."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from service.api.documents import document_handler
from service.api.durable.render import CHALLENGE_EVENT, ORCHESTRATOR, WEBHOOK, RuntimeStatus
from service.config import Settings

Schema = dict[str, Any]

JSON = "application/json"
#: Any one of them: Functions' query parameter, its header, or the bearer key v1 takes.
KEYS: list[dict[str, list[str]]] = [{"code": []}, {"functionsKey": []}, {"bearer": []}]
INSTANCE = f"{WEBHOOK}/instances/{{instanceId}}"
STARTS = [
    f"{prefix}/{{functionName}}{tail}"
    for prefix in ("/api/orchestrators", "/orchestrators", f"{WEBHOOK}/orchestrators")
    for tail in ("", "/{instanceId}")
]


def openapi_document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Phone verification: the Durable Functions surface",
            "version": version("phone-verification"),
            "description": (
                f"The commands of the Durable Functions phone-verification lab ({ORCHESTRATOR}):"
                " start an instance, raise SmsChallengeResponse with the code, poll its status."
                " An instance is a verification; its output is true when approved."
            ),
        },
        "tags": [{"name": "durable", "description": "Orchestration instances."}],
        "paths": _paths(settings),
        "components": {
            "securitySchemes": {
                "code": {"type": "apiKey", "in": "query", "name": "code"},
                "functionsKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": _schemas(settings),
            "responses": {
                "Error": _content(_ref("Error"), "Refused; `Message` says why."),
            },
        },
    }


def _paths(settings: Settings) -> dict[str, Any]:
    start = _operation(
        "Start an instance: an SMS with a code goes to the number in the body.",
        {"202": _check_status("Started (or, with an instance ID already used, the same one).")},
        errors=(400, 401, 413, 429, 503),
        body=_ref("StartBody"),
    )
    paths: dict[str, Any] = {}
    for path in STARTS:
        parameters = [_path("functionName", f"The orchestrator: {ORCHESTRATOR}.")]
        if path.endswith("{instanceId}"):
            parameters.append(
                _path(
                    "instanceId",
                    "Yours: the same ID starts one verification however often it is sent;"
                    " the ID answered is the service's.",
                )
            )
        paths[path] = {"parameters": parameters, "post": {**start, "operationId": _id(path)}}
    not_supported = {"501": {"$ref": "#/components/responses/Error"}}
    paths[f"{WEBHOOK}/instances"] = {
        "get": _operation("Listing instances: not supported.", not_supported, errors=(401,)),
        "delete": _operation("Purging by filter: not supported.", not_supported, errors=(401,)),
    }
    status_parameters = [
        _query("showInput", "false leaves `input` null.", "boolean"),
        _query("returnInternalServerErrorOnFailure", "true answers 500 when Failed.", "boolean"),
    ]
    paths[INSTANCE] = {
        "parameters": [_path("instanceId", "The instance's id, as the start answered it.")],
        "get": _operation(
            "The instance's status.",
            {
                "200": _content(
                    _ref("InstanceStatus"), "Decided: Completed, Terminated or Failed."
                ),
                "202": _content(_ref("InstanceStatus"), "Running: ask again later."),
            },
            errors=(401, 404, 503),
            parameters=status_parameters,
        ),
        "delete": _operation(
            "Purge: refused, 412 while running, else 501 (retention deletes finished ones).",
            {"412": _ref_response(), "501": _ref_response()},
            errors=(401, 404),
        ),
    }
    paths[f"{INSTANCE}/raiseEvent/{{eventName}}"] = {
        "parameters": [
            _path("instanceId", "The instance's id."),
            _path("eventName", f"{CHALLENGE_EVENT}; any other is accepted and ignored."),
        ],
        "post": _operation(
            f"Raise an event: {CHALLENGE_EVENT} with the code. Answered once it is decided, and"
            " never with the verdict: the status tells it.",
            {"202": {"description": "Accepted; no body."}},
            errors=(400, 401, 404, 410, 413, 429, 503),
            body=_ref("EventBody"),
        ),
    }
    paths[f"{INSTANCE}/terminate"] = {
        "parameters": [_path("instanceId", "The instance's id.")],
        "post": _operation(
            "Terminate: cancel the verification; its code stops working.",
            {"202": {"description": "Terminated; no body."}},
            errors=(401, 404, 410, 503),
            parameters=[_query("reason", "Accepted, not kept.", "string")],
        ),
    }
    paths[f"{INSTANCE}/restart"] = {
        "parameters": [_path("instanceId", "The instance's id.")],
        "post": _operation(
            "A new verification for the same number.",
            {"202": _check_status("Started."), "501": _ref_response()},
            errors=(401, 404, 410, 429, 503),
            parameters=[_query("restartWithNewInstanceId", "false is 501.", "boolean")],
        ),
    }
    for operation in ("suspend", "resume", "rewind"):
        paths[f"{INSTANCE}/{operation}"] = {
            "parameters": [_path("instanceId", "The instance's id.")],
            "post": _operation(
                f"{operation.capitalize()}: not supported.",
                {"501": _ref_response()},
                errors=(401, 404) if operation == "rewind" else (401, 404, 410),
            ),
        }
    paths[f"{WEBHOOK}/openapi.json"] = {
        "get": {
            "operationId": "durableOpenapi",
            "summary": "This document.",
            "tags": ["durable"],
            "security": [],
            "responses": {"200": _content({"type": "object"}, "The OpenAPI document.")},
        }
    }
    _number(paths)
    return paths


def _schemas(settings: Settings) -> dict[str, Schema]:
    length = settings.verification.code_length
    return {
        "StartBody": {
            "type": "string",
            "description": "The orchestrator's input: the phone number in international form.",
            "examples": ["+14155550100"],
        },
        "EventBody": {
            "type": ["integer", "string"],
            "description": (
                f"The code: a string of {length} digits, or a number, padded with leading zeros"
                f" to {length} digits."
            ),
            "examples": [1185, "0" * length],
        },
        "CheckStatus": {
            "type": "object",
            "required": [
                "id",
                "statusQueryGetUri",
                "sendEventPostUri",
                "terminatePostUri",
                "purgeHistoryDeleteUri",
                "restartPostUri",
                "suspendPostUri",
                "resumePostUri",
            ],
            "properties": {
                "id": {"type": "string"},
                **{
                    name: {"type": "string", "format": "uri-template"}
                    for name in (
                        "statusQueryGetUri",
                        "sendEventPostUri",
                        "terminatePostUri",
                        "purgeHistoryDeleteUri",
                        "restartPostUri",
                        "suspendPostUri",
                        "resumePostUri",
                    )
                },
            },
        },
        "InstanceStatus": {
            "type": "object",
            "required": [
                "name",
                "instanceId",
                "runtimeStatus",
                "input",
                "customStatus",
                "output",
                "createdTime",
                "lastUpdatedTime",
            ],
            "properties": {
                "name": {"const": ORCHESTRATOR},
                "instanceId": {"type": "string"},
                "runtimeStatus": {"type": "string", "enum": [s.value for s in RuntimeStatus]},
                "input": {"type": ["string", "null"], "description": "The E.164 number."},
                "customStatus": {"type": "null"},
                "output": {
                    "type": ["boolean", "string", "null"],
                    "description": (
                        "Completed: true if approved, false if expired or out of attempts."
                        " Failed: why. Running and Terminated: null."
                    ),
                },
                "createdTime": {"type": "string", "format": "date-time"},
                "lastUpdatedTime": {"type": "string", "format": "date-time"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["Message"],
            "properties": {"Message": {"type": "string"}},
        },
    }


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    errors: tuple[int, ...],
    body: Schema | None = None,
    parameters: list[Schema] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": ["durable"],
        "security": KEYS,
        "parameters": [
            _query("taskHub", "Accepted; echoed in the URLs answered.", "string"),
            _query("connection", "Accepted; echoed in the URLs answered.", "string"),
            *(parameters or []),
        ],
        "responses": {
            **responses,
            **{str(s): _ref_response() for s in (*errors, 500) if str(s) not in responses},
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    return operation


def _check_status(description: str) -> dict[str, Any]:
    response = _content(_ref("CheckStatus"), description)
    response["headers"] = {
        "Location": {"required": True, "schema": {"type": "string"}},
        "Retry-After": {"required": True, "schema": {"type": "integer"}},
    }
    return response


def _number(paths: dict[str, Any]) -> None:
    """Give every operation without one an operationId from its method and path."""
    for path, item in paths.items():
        for method, operation in item.items():
            if method != "parameters" and "operationId" not in operation:
                operation["operationId"] = f"{method}{_id(path)}"


def _id(path: str) -> str:
    words = path.replace("{", "").replace("}", "").replace(".", "/").split("/")
    return "".join(w[:1].upper() + w[1:] for w in words if w)


def _path(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _query(name: str, description: str, kind: str) -> Schema:
    return {"name": name, "in": "query", "schema": {"type": kind}, "description": description}


def _content(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _ref_response() -> Schema:
    return {"$ref": "#/components/responses/Error"}


#: The handler of this surface's document.
openapi = document_handler(openapi_document)
