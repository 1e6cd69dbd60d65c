"""The OpenAPI 3.1 document of the HTTP API, built from the settings and served at /openapi.json.

Limits that come from the settings (the code's length, the reference's, the body's) are written
into the document, so it describes this deployment rather than the defaults.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from service.api.documents import document_handler
from service.config import Settings, VerificationSettings
from service.models import Status

Schema = dict[str, Any]

JSON = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
VERIFICATION_PATH = "/verifications/{id}"


def openapi_document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Phone verification",
            "version": version("phone-verification"),
            "description": (
                "Send a one-time code by SMS, then check the code the person types in. A"
                " verification ends approved, expired, max_attempts_reached, canceled or failed;"
                " each outcome is also pushed to a queue."
            ),
        },
        "tags": [
            {"name": "verifications", "description": "Start, check and cancel verifications."},
            {"name": "operations", "description": "Health, metrics and this document."},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `Authorization: Bearer <key>`.",
                }
            },
            "schemas": _schemas(settings.verification),
            "parameters": _parameters(),
            "headers": _headers(),
            "responses": _responses(settings),
        },
    }


# -- paths ----------------------------------------------------------------------------------------


def _paths() -> dict[str, Any]:
    return {
        "/verifications": {"post": _start()},
        VERIFICATION_PATH: {
            "parameters": [_ref("parameters", "VerificationId")],
            "get": _operation(
                "getVerification",
                "Show a verification.",
                {"200": _view("The verification.")},
                errors=(401, 404, 500, 503),
            ),
            "delete": _operation(
                "cancelVerification",
                "Cancel a pending verification; its code stops working.",
                {"200": _view("The verification, now canceled.")},
                errors=(401, 404, 409, 429, 500, 503),
            ),
        },
        f"{VERIFICATION_PATH}/code": {
            "parameters": [_ref("parameters", "VerificationId")],
            "post": _operation(
                "submitCode",
                "Check a code; answered once it has been processed.",
                {
                    "200": _view(
                        "The verification after the code: approved, still pending with one"
                        " attempt fewer, or max_attempts_reached on the last wrong code."
                    )
                },
                body=_ref("schemas", "CodeRequest"),
                errors=(400, 401, 404, 409, 413, 415, 422, 429, 500, 503),
            ),
        },
        "/healthz": {
            "get": {
                **_public(
                    "healthz",
                    "Whether the service is up and its database takes writes.",
                    _content(JSON, _ref("schemas", "Health"), "The service is up."),
                ),
                "responses": {
                    "200": _content(JSON, _ref("schemas", "Health"), "The service is up."),
                    "503": _content(
                        JSON, _ref("schemas", "Health"), "The database does not take writes."
                    ),
                    "500": _ref("responses", ERRORS[500]),
                },
            }
        },
        "/readyz": {
            "get": {
                **_public(
                    "readyz",
                    "Whether this instance can do its work now: its database takes writes and its"
                    " publisher reaches the queue.",
                    _content(JSON, _ref("schemas", "Readiness"), "Ready."),
                ),
                "responses": {
                    "200": _content(JSON, _ref("schemas", "Readiness"), "Ready."),
                    "503": _content(
                        JSON, _ref("schemas", "Readiness"), "Not ready; `checks` says what fails."
                    ),
                    "500": _ref("responses", ERRORS[500]),
                },
            }
        },
        "/metrics": {
            "get": _public(
                "metrics",
                "Prometheus metrics in the text exposition format.",
                _content("text/plain", {"type": "string"}, "The metrics."),
            )
        },
        "/openapi.json": {
            "get": _public(
                "openapi",
                "This document.",
                _content(JSON, {"type": "object"}, "The OpenAPI document."),
            )
        },
    }


def _start() -> dict[str, Any]:
    created = _view(
        "Started: the SMS is on its way. Also the answer when the request is a replay of an"
        " Idempotency-Key, or when a verification is already pending for the number (the code"
        " is sent again and that verification is shown).",
        headers={
            "Location": _ref("headers", "Location"),
            "Idempotent-Replayed": _ref("headers", "IdempotentReplayed"),
        },
    )
    created["links"] = {
        name: {"operationId": operation_id, "parameters": {"id": "$response.body#/id"}}
        for name, operation_id in [
            ("GetVerification", "getVerification"),
            ("SubmitCode", "submitCode"),
            ("CancelVerification", "cancelVerification"),
        ]
    }
    operation = _operation(
        "startVerification",
        "Start a verification: an SMS with a one-time code goes to `phone`.",
        {"202": created, "409": _ref("responses", "PendingInAnotherService")},
        body=_ref("schemas", "StartRequest"),
        errors=(400, 401, 413, 415, 422, 429, 500, 503),
    )
    operation["parameters"] = [_ref("parameters", "IdempotencyKey")]
    return operation


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    errors: tuple[int, ...],
    body: Schema | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["verifications"],
        "security": BEARER,
        "responses": {**responses, **{str(s): _ref("responses", ERRORS[s]) for s in errors}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    return operation


def _public(operation_id: str, summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["operations"],
        "security": [],
        "responses": {"200": ok, "500": _ref("responses", ERRORS[500])},
    }


def _view(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response = _content(JSON, _ref("schemas", "Verification"), description)
    if headers:
        response["headers"] = headers
    return response


def _content(media_type: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _ref(section: str, name: str) -> Schema:
    return {"$ref": f"#/components/{section}/{name}"}


# -- components -----------------------------------------------------------------------------------


def _schemas(settings: VerificationSettings) -> dict[str, Schema]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Status": {
            "type": "string",
            "enum": [s.value for s in Status],
            "description": "pending until decided; every other status is final.",
        },
        "Verification": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "status",
                "to",
                "reference",
                "attempts_left",
                "created_at",
                "expires_at",
                "completed_at",
                "reason",
            ],
            "properties": {
                "id": {"type": "string", "examples": ["VE" + "0" * 32]},
                "status": _ref("schemas", "Status"),
                "to": {
                    "type": "string",
                    "description": "The E.164 number; masked some time after it is final.",
                },
                "reference": {"type": ["string", "null"]},
                "attempts_left": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": settings.max_attempts,
                    "description": "Wrong codes that may still be tried.",
                },
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {
                    "type": "string",
                    "format": "date-time",
                    "description": f"created_at plus {settings.ttl_seconds:g} seconds.",
                },
                "completed_at": nullable_time,
                "reason": {
                    "type": ["string", "null"],
                    "description": "Why it failed, when status is failed.",
                },
            },
        },
        "StartRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["phone"],
            "properties": {
                "phone": {
                    "type": "string",
                    "pattern": r"^\+[0-9 ().-]{2,31}$",
                    "minLength": 3,
                    "maxLength": 32,
                    "description": (
                        "International form: `+`, the country code, the number. Spaces, hyphens,"
                        " dots and parentheses are ignored, and so is a trunk prefix after the"
                        " country code (`+44 (0) 7400 123456`); the verification's `to` is the"
                        " E.164 form. A non-string is 400, a non-number 422."
                    ),
                    "examples": ["+14155550100", "+1 (415) 555-0100"],
                },
                "reference": {
                    "type": ["string", "null"],
                    "maxLength": settings.max_reference_length,
                    "description": "Yours, shown back in the verification and its outcome.",
                },
            },
        },
        "CodeRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code"],
            "properties": {
                "code": {
                    "type": "string",
                    "pattern": f"^[0-9]{{{settings.code_length}}}$",
                    "minLength": settings.code_length,
                    "maxLength": settings.code_length,
                    "examples": ["0" * settings.code_length],
                    "description": "The code sent: `verification.code_length` digits (one"
                    " started before that setting changed keeps its own length).",
                }
            },
        },
        "Error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["error"],
            "properties": {"error": _ref("schemas", "ErrorDetail")},
        },
        "NotPendingError": {
            "type": "object",
            "additionalProperties": False,
            "required": ["error", "verification"],
            "properties": {
                "error": _ref("schemas", "ErrorDetail"),
                "verification": _ref("schemas", "Verification"),
            },
        },
        "ErrorDetail": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable: program against it."},
                "message": {"type": "string", "description": "For people; may change."},
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "description": "When not ready: each check (store, publisher) and its state.",
                    "additionalProperties": {"type": "string", "enum": ["ok", "failing"]},
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "reason": {"type": "string"},
            },
        },
    }


def _parameters() -> dict[str, Schema]:
    return {
        "VerificationId": {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The verification's id, as in its `id` and `Location`.",
        },
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
            "description": (
                "Retrying with the same key and body returns the first answer instead of"
                " starting again; the same key with another body is 422."
            ),
        },
    }


def _headers() -> dict[str, Schema]:
    return {
        "Location": {
            "required": True,
            "schema": {"type": "string"},
            "description": "The verification's URL, /verifications/{id}.",
        },
        "IdempotentReplayed": {
            "schema": {"type": "string", "enum": ["true", "false"]},
            "description": (
                "Present when no verification was started: true for a replay of an"
                " Idempotency-Key, false when a pending one for the number was sent again."
            ),
        },
        "WWWAuthenticate": {"required": True, "schema": {"type": "string"}},
        "RetryAfter": {
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds to wait before trying again.",
        },
        "Allow": {"required": True, "schema": {"type": "string"}},
    }


#: The component response for each error status, in the contract's words.
ERRORS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "NotPending",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "Unprocessable",
    429: "RateLimited",
    500: "InternalError",
    503: "Unavailable",
}


def _responses(settings: Settings) -> dict[str, Any]:
    limit = settings.server.max_body_bytes

    def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        response = _content(JSON, _ref("schemas", "Error"), description)
        if headers:
            response["headers"] = headers
        return response

    return {
        "BadRequest": error(
            "The request is malformed. Codes: malformed_json, not_an_object, invalid_type,"
            " missing_field, unknown_field, invalid_idempotency_key."
        ),
        "Unauthorized": error(
            "No API key, or not a valid one. Codes: unauthorized, invalid_api_key.",
            headers={"WWW-Authenticate": _ref("headers", "WWWAuthenticate")},
        ),
        "NotFound": error("No verification has this id. Code: not_found."),
        "PendingInAnotherService": error(
            "A verification is pending for the number in a Service of the Twilio Verify"
            " surface (/v2): one number has one pending at a time. Code:"
            " pending_in_another_service."
        ),
        "MethodNotAllowed": error(
            "The path does not take this method. Code: method_not_allowed.",
            headers={"Allow": _ref("headers", "Allow")},
        ),
        "NotPending": _content(
            JSON,
            _ref("schemas", "NotPendingError"),
            "The verification is already final; `verification` shows it. Code: not_pending.",
        ),
        "PayloadTooLarge": error(
            f"The body is over {limit} bytes; it is not read. Code: payload_too_large."
        ),
        "UnsupportedMediaType": error(
            "The body is not sent as application/json. Code: unsupported_media_type."
        ),
        "Unprocessable": error(
            "Well-formed, but not acceptable. Codes: invalid_phone, invalid_reference,"
            " invalid_code, idempotency_key_reused, country_not_allowed, number_type_not_allowed."
        ),
        "RateLimited": error(
            "A limit was reached; try again after Retry-After seconds. Codes: rate_limited,"
            " rate_limited_phone, rate_limited_key, sms_budget.",
            headers={"Retry-After": _ref("headers", "RetryAfter")},
        ),
        "InternalError": error("A bug; it is logged. Code: internal_error."),
        "Unavailable": error("The service is stopping; try again shortly. Code: unavailable."),
    }


#: The handler of this surface's document.
openapi = document_handler(openapi_document)
