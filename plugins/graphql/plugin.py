from __future__ import annotations

import json
from typing import Any

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    Pushback,
    StepContext,
)
from plugins.bodies import decode_text, summarize_text
from plugins.http.plugin import (
    STATUS_SCHEMA,
    checked_client,
    json_body_assertions,
    send_request,
    status_assertion,
)
from plugins.pushback import http_pushback, url_rate_target


class GraphqlPlugin(ProtocolPlugin):
    """Sends one GraphQL operation as an HTTP POST (``application/json``) with httpx.

    ``with``: url, query, variables, operation_name, headers, timeout.
    ``expect``: status (HTTP; 200 unless told), json (JSONPath over the whole response document,
    ``$.data.user.name``), errors (true/false: whether the response's ``errors`` array is
    present and non-empty; or message substrings that must each appear in one error).
    ``capture``: JSONPath over the response document.
    """

    name = "graphql"
    params_schema = {
        "type": "object",
        "required": ["url", "query"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "pattern": "^https?://", "minLength": 8},
            "query": {"type": "string", "minLength": 1},
            "variables": {"type": "object"},
            "operation_name": {"type": "string", "minLength": 1},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        },
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "status": STATUS_SCHEMA,
            "json": {"type": "object"},
            "errors": {
                "oneOf": [
                    {"type": "boolean"},
                    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                ]
            },
        },
    }

    example = {
        "name": "the user can be read back",
        "plugin": "graphql",
        "with": {
            "url": "https://api.test/graphql",
            "query": "query User($id: ID!) { user(id: $id) { name } }",
            "variables": {"id": "{{ payload.user_id }}"},
        },
        "expect": {"errors": False, "json": {"$.data.user.name": "Ada"}},
    }

    def __init__(self) -> None:
        self._client = checked_client()  # one per process: pooling across steps and runs

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        operation: dict[str, Any] = {"query": params["query"]}
        if "variables" in params:
            operation["variables"] = params["variables"]
        if "operation_name" in params:
            operation["operationName"] = params["operation_name"]
        try:
            content = json.dumps(operation, ensure_ascii=False, allow_nan=False).encode()
        except ValueError as exc:
            raise PluginError(f"the variables are not JSON: {exc}") from None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/graphql-response+json, application/json",
            **params.get("headers", {}),
        }
        request_summary: dict[str, Any] = {
            "url": params["url"],
            "headers": dict(params.get("headers", {})),
            "query": summarize_text(params["query"]),
        }
        for key in ("variables", "operation_name"):
            if key in params:
                request_summary[key] = params[key]
        try:
            exchange = send_request(
                self._client,
                "POST",
                params["url"],
                context=context,
                headers=headers,
                content=content,
                timeout=params.get("timeout"),
            )
        except PluginError as exc:
            exc.request = request_summary  # a refused connection still shows what was tried
            raise
        content_type = exchange.headers.get("content-type", "")
        text = decode_text(exchange.content, content_type)
        document = _document(text)
        return PluginResult(
            data=document,
            fields={
                "status": exchange.status,
                "headers": exchange.headers,
                "elapsed_ms": exchange.elapsed_ms,
                "errors": _errors(document),
            },
            request=request_summary,
            response=exchange.summary(text),
            pushback=http_pushback(exchange.status, exchange.headers),
        )

    def rate_target(self, params: dict[str, Any]) -> str | None:
        return url_rate_target(params["url"])

    def accepts_pushback(self, expect: dict[str, Any], pushback: Pushback) -> bool:
        return status_assertion(expect.get("status", 200), pushback.status).passed

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions = [status_assertion(expect.get("status", 200), result.fields["status"])]
        if "json" in expect:
            assertions.extend(json_body_assertions(expect["json"], result.data))
        if "errors" in expect:
            assertions.append(_check_errors(expect["errors"], result.fields["errors"]))
        return assertions


def _document(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _errors(document: Any) -> list[str] | None:
    """The messages of the response's ``errors`` array; None when there is none."""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    return [
        str(error.get("message", "")) if isinstance(error, dict) else str(error) for error in errors
    ]


def _check_errors(expected: bool | list[str], messages: list[str] | None) -> Assertion:
    if isinstance(expected, bool):
        passed = (messages is not None) == expected
        if passed:
            message = ""
        elif expected:
            message = "the response has no GraphQL errors"
        else:
            message = f"the response has GraphQL errors: {'; '.join(messages or [])}"
        return Assertion("errors", passed, expected, messages, message)
    missing = [text for text in expected if not any(text in found for found in messages or [])]
    message = "" if not missing else f"no GraphQL error mentions {', '.join(map(repr, missing))}"
    if missing and messages is None:
        message = f"the response has no GraphQL errors (expected {', '.join(map(repr, missing))})"
    return Assertion("errors", not missing, expected, messages, message)
