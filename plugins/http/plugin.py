from __future__ import annotations

import json
import time
from typing import Any

import httpx
from django.conf import settings

from plugins.base import (
    Assertion,
    PluginError,
    PluginResult,
    ProtocolPlugin,
    StepContext,
    check_json_paths,
)
from plugins.outbound import outbound_policy

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    limit = settings.ORCHESTRA_MAX_STORED_BODY_CHARS
    return text if len(text) <= limit else text[:limit] + "…"


def _request_headers(params: dict[str, Any]) -> httpx.Headers:
    headers = httpx.Headers(params.get("headers") or {})
    if "json" in params and "content-type" not in headers:
        headers["Content-Type"] = "application/json"
    return headers


def _request_content(params: dict[str, Any]) -> bytes | str | None:
    # Encoded here rather than by httpx's ``json=``, which sends no body at all for ``null``.
    if "json" in params:
        return json.dumps(params["json"], ensure_ascii=False, allow_nan=False).encode()
    return params.get("body")


def _check_outbound(request: httpx.Request) -> None:
    url = request.url
    outbound_policy().check(url.host, url.port or (443 if url.scheme == "https" else 80))


class HttpPlugin(ProtocolPlugin):
    """Sends one HTTP request with httpx.

    ``with``: method, url, headers, query, json or body, timeout (seconds), follow_redirects.
    ``expect``: status (a code or a list of codes), headers (name -> exact value), json
    (JSONPath -> value), body_contains (text), response_time_ms (an upper bound).
    ``capture``: JSONPath over the response's JSON body.
    """

    name = "http"
    params_schema = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "method": {"type": "string", "enum": METHODS, "default": "GET"},
            "url": {"type": "string", "pattern": "^https?://", "minLength": 8},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "json": {},
            "body": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "follow_redirects": {"type": "boolean"},
        },
        "not": {"required": ["json", "body"]},
    }
    expect_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "status": {
                "oneOf": [
                    {"type": "integer", "minimum": 100, "maximum": 599},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "integer", "minimum": 100, "maximum": 599},
                    },
                ]
            },
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "json": {"type": "object"},
            "body_contains": {"type": "string"},
            "response_time_ms": {"type": "number", "exclusiveMinimum": 0},
        },
    }

    def __init__(self) -> None:
        # One client per process: connection pooling across steps and runs. The outbound policy
        # is checked before every request it sends, redirects included.
        self._client = httpx.Client(event_hooks={"request": [_check_outbound]})

    def execute(self, params: dict[str, Any], context: StepContext) -> PluginResult:
        method = params.get("method", "GET")
        timeout = min(float(params.get("timeout", context.timeout)), context.timeout)
        request_summary: dict[str, Any] = {
            "method": method,
            "url": params["url"],
            "headers": dict(params.get("headers", {})),
        }
        if params.get("query"):
            request_summary["query"] = params["query"]
        if "json" in params:
            request_summary["body"] = _text(params["json"])
        elif "body" in params:
            request_summary["body"] = _text(params["body"])
        try:
            request = self._client.build_request(
                method,
                params["url"],
                headers=_request_headers(params),
                params=params.get("query"),
                content=_request_content(params),
                timeout=timeout,
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PluginError(f"invalid URL {params['url']!r}: {exc}") from None
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            # A header value outside ASCII, a NaN in the JSON body...: no retry will fix it.
            raise PluginError(f"cannot build the request to {params['url']}: {exc}") from None
        started = time.perf_counter()
        try:
            response = self._client.send(
                request, follow_redirects=params.get("follow_redirects", False)
            )
        except httpx.TimeoutException:
            raise PluginError(
                f"{method} {params['url']} timed out after {timeout:g}s", retryable=True
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PluginError(f"invalid URL {params['url']!r}: {exc}") from None
        except httpx.LocalProtocolError as exc:
            # Our own request is malformed (say, a newline in a header): permanent.
            raise PluginError(f"{method} {params['url']} is not a valid request: {exc}") from None
        except httpx.TransportError as exc:
            raise PluginError(
                f"{method} {params['url']} failed: {exc or type(exc).__name__}", retryable=True
            ) from None
        except httpx.RequestError as exc:
            # Too many redirects, an undecodable body: the server will answer the same again.
            raise PluginError(
                f"{method} {params['url']} failed: {exc or type(exc).__name__}"
            ) from None
        # Measured here rather than read from ``response.elapsed``, which a transport that hands
        # back an already-read response (a mock, a cache) never sets.
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            document = response.json() if response.content else None
        except ValueError:
            document = None
        headers = {name.lower(): value for name, value in response.headers.items()}
        return PluginResult(
            data=document,
            fields={
                "status": response.status_code,
                "headers": headers,
                "elapsed_ms": elapsed_ms,
                # The whole text, for body_contains; the stored summary below is truncated.
                "body": response.text,
            },
            request=request_summary,
            response={
                "status": response.status_code,
                "headers": headers,
                "body": _text(response.text),
                "elapsed_ms": elapsed_ms,
            },
        )

    def check(self, expect: dict[str, Any], result: PluginResult) -> list[Assertion]:
        assertions: list[Assertion] = []
        status = result.fields["status"]
        if "status" in expect:
            allowed = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
            passed = status in allowed
            assertions.append(
                Assertion(
                    "status",
                    passed,
                    expect["status"],
                    status,
                    "" if passed else f"status is {status}, expected {expect['status']}",
                )
            )
        for name, expected in expect.get("headers", {}).items():
            actual = result.fields["headers"].get(name.lower())
            passed = actual == expected
            message = "" if passed else f"header {name} is {actual!r}, expected {expected!r}"
            assertions.append(Assertion(f"header {name}", passed, expected, actual, message))
        if "json" in expect:
            if result.data is None:
                assertions.append(
                    Assertion("json", False, expect["json"], None, "response body is not JSON")
                )
            else:
                assertions.extend(check_json_paths(expect["json"], result.data))
        if "body_contains" in expect:
            body = result.fields.get("body", result.response.get("body", ""))
            passed = expect["body_contains"] in body
            assertions.append(
                Assertion(
                    "body_contains",
                    passed,
                    expect["body_contains"],
                    None,
                    "" if passed else f"body does not contain {expect['body_contains']!r}",
                )
            )
        if "response_time_ms" in expect:
            elapsed = result.fields["elapsed_ms"]
            passed = elapsed <= expect["response_time_ms"]
            assertions.append(
                Assertion(
                    "response_time_ms",
                    passed,
                    expect["response_time_ms"],
                    elapsed,
                    "" if passed else f"took {elapsed} ms, limit {expect['response_time_ms']} ms",
                )
            )
        return assertions
